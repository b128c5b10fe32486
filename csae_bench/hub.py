"""Is the Hugging Face hub reachable? One cheap probe, shared by model and SAE loading, so an
unreachable hub fails in seconds instead of huggingface_hub's ~25 s retry loop. Imports nothing
heavy: the release-id checks run it before torch is imported."""

from __future__ import annotations

import socket

HUB_HOST = ("huggingface.co", 443)


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """A TCP connection to huggingface.co:443 within ``timeout_s`` seconds (a DNS failure returns
    at once)."""
    try:
        socket.create_connection(HUB_HOST, timeout=timeout_s).close()
        return True
    except OSError:
        return False
