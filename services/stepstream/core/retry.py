"""Retry timing."""


def backoff_ms(retry: int, base_ms: int, max_ms: int) -> int:
    """Exponential backoff before retry number ``retry`` (1 for the first retry): base, 2·base, 4·base, …"""
    if retry < 1:
        raise ValueError(f"Expected a retry number of 1 or more, but got {retry}")
    return min(max_ms, base_ms * (1 << min(retry - 1, 32)))
