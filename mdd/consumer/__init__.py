"""mdd-consumer: the SenpAI market-data consumer."""
