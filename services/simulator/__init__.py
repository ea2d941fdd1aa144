"""A local stand-in for Twilio's Messages API and the WhatsApp Cloud API (`parley simulate`).

`create_app(SimConfig(...))` serves both providers' wire formats, posts signed status callbacks and
inbound webhooks to Parley, and offers a control API under /sim/ (docs/outbound-design.md, "The
provider simulator"). Tests run it in-process (tests/simulation.py); `parley simulate` runs it alone.
"""

from services.simulator.app import create_app, serving
from services.simulator.config import Knobs, MetaNumber, SimConfig

__all__ = ["Knobs", "MetaNumber", "SimConfig", "create_app", "serving"]
