"""``txgate demo``: a demo upstream, the gateway on the memory backend and scripted traffic."""

from gateway.demo.run import run_demo

__all__ = ["run_demo"]
