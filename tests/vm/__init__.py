"""Tests that boot a real kernel under QEMU (marker ``vm``)."""
