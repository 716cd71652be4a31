"""pydkms: Dynamic Kernel Module Support, reimplemented in Python."""

__version__ = "0.1.0"

#: The upstream compatibility level printed by ``dkms --version`` and used in make.log headers.
COMPAT_VERSION = "dkms-3.2.2"
