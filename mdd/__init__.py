"""mdd: a real-time market-data daemon on Trio.

The public API, re-exported here: the event model, configuration, the bus,
the daemon and the error hierarchy. Subpackages (``mdd.providers``,
``mdd.sinks``, ``mdd.sim``, ``mdd.consumer``) re-export their own.
"""

__version__ = "0.1.0"

from .bus import Bus as Bus
from .bus import BusStats as BusStats
from .bus import SinkInbox as SinkInbox
from .config import Config as Config
from .config import load_config as load_config
from .daemon import Daemon as Daemon
from .errors import ConfigError as ConfigError
from .errors import EventDecodeError as EventDecodeError
from .errors import MddError as MddError
from .errors import ParseError as ParseError
from .errors import ProviderError as ProviderError
from .errors import SinkError as SinkError
from .events import BookEvent as BookEvent
from .events import Event as Event
from .events import HeartbeatEvent as HeartbeatEvent
from .events import QuoteEvent as QuoteEvent
from .events import StatusEvent as StatusEvent
from .events import TradeEvent as TradeEvent
from .events import dumps as dumps
from .events import event_from_dict as event_from_dict
from .events import event_to_dict as event_to_dict
from .events import loads as loads
