from perfpilot.v1 import agent_pb2 as pb
from perfpilot_operator.logic.sharedcache import shared_cache_condition


def test_no_condition_without_the_tier() -> None:
    assert shared_cache_condition({"a": pb.SharedCacheStats()}) is None
    assert shared_cache_condition({}) is None


def test_connected_and_disconnected_name_the_pods_and_the_error() -> None:
    up = pb.SharedCacheStats(configured=True, up=True)
    down = pb.SharedCacheStats(configured=True, up=False, last_error="ConnectionError: Error 111 connecting")
    assert shared_cache_condition({"a": up, "b": up}) == (
        "SharedCacheAvailable", True, "Connected", "2/2 sidecars use the shared cache tier")
    type_, ok, reason, message = shared_cache_condition({"a": up, "b": down}) or ("", True, "", "")
    assert (type_, ok, reason) == ("SharedCacheAvailable", False, "Disconnected")
    assert message.startswith("1 of 2 sidecars") and "b: ConnectionError: Error 111" in message
