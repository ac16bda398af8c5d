"""evolution-listener: provisions an Evolution API instance for every new user, event-driven."""

__version__ = "0.1.0"
