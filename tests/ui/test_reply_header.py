"""A finished reply's header states what made it: the overlay's and control vector's switches (or that none is
installed), its token count and speed, how it ended when not at end of turn, and the meter's divergence."""

from appliance.overlay.control import ControlVector
from appliance.overlay.files import Overlay
from appliance.runtime.divergence import Divergence
from appliance.runtime.sampler import SamplingSettings
from appliance.runtime.session import Reply
from appliance.ui.reply_worker import reply_header


def _reply(finish: str = "stop", overlay_on: bool = True, control_on: bool = False) -> Reply:
    on = frozenset([Overlay.KIND] * overlay_on + [ControlVector.KIND] * control_on)
    return Reply("four words of reply", [1, 2, 3, 4], finish, on, SamplingSettings(), [9] * 10, 10, 0, 0.5, 0.1)


def test_header_of_a_reply_ended_at_end_of_turn():
    assert reply_header(_reply(), None, True, False) == "assistant  overlay ON  4 tok  8.0 tok/s"


def test_header_says_none_installed_and_the_control_switch_only_where_installed():
    assert reply_header(_reply(overlay_on=False), None, False, False) == "assistant  overlay none  4 tok  8.0 tok/s"
    header = reply_header(_reply(overlay_on=False, control_on=True), None, True, True)
    assert header == "assistant  overlay OFF  control ON  4 tok  8.0 tok/s"


def test_header_says_how_a_reply_ended_early_and_its_divergence():
    assert reply_header(_reply("cancelled"), None, True, False).endswith("  stopped")
    header = reply_header(_reply("length"), Divergence(positions=4, rmse=0.4123, max=1.7301), True, False)
    assert header == "assistant  overlay ON  4 tok  8.0 tok/s  cut at max tokens  KL rmse 0.412 max 1.730"
