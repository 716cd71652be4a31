"""Tests that run in a debootstrapped Debian chroot (marker ``system``)."""
