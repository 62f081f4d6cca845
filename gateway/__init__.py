"""txgate gateway: server, config, routes, pipeline, state, velocity, forwarding, decision log, CLI."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("txgate")
except PackageNotFoundError:   # run from a source tree that was never installed
    __version__ = "0+unknown"
