# Distribution integration files of pydkms (dist/; spec/autoinstall-hooks.md §5-§8).
#
#   make install-integration FAMILY=debian|rpm|arch [DESTDIR=/staging] [PYTHON=python3] [WRAPPER=yes|no]
#   make uninstall-integration FAMILY=... [DESTDIR=...]
#   make check-integration            # shellcheck the scripts (when shellcheck is installed)
#
# The dkms command itself is the Python package (`pip install .`). /usr/sbin/dkms, which the kernel
# hooks, dkms_autoinstaller and dkms.service call, is a two-line wrapper running `PYTHON -m pydkms`;
# PYTHON must be an interpreter that can import pydkms (e.g. the python of the venv pip installed
# into). WRAPPER=no leaves /usr/sbin/dkms alone (when a package puts the dkms command there itself).
# The installed paths are fixed: the hooks and packaged maintainer scripts call each other by them.
# /etc/dkms/framework.conf (every setting commented out, at its default) is installed only where
# none exists, and uninstalled only if unchanged: an administrator's edits are never lost.

FAMILY ?= debian
DESTDIR ?=
PYTHON ?= python3
WRAPPER ?= yes

INSTALL ?= install
# absolute, so that `make -f /path/to/Makefile` works from anywhere
DIST := $(patsubst %/,%,$(dir $(abspath $(lastword $(MAKEFILE_LIST)))))/dist

# destination:source:mode, per family
COMMON_FILES := \
	/usr/lib/dkms/common.postinst:$(DIST)/common/common.postinst:755
DEBIAN_FILES := \
	/usr/lib/dkms/dkms_autoinstaller:$(DIST)/common/dkms_autoinstaller:755 \
	/etc/kernel/postinst.d/dkms:$(DIST)/debian/kernel/postinst.d/dkms:755 \
	/etc/kernel/header_postinst.d/dkms:$(DIST)/debian/kernel/header_postinst.d/dkms:755 \
	/etc/kernel/preinst.d/dkms:$(DIST)/debian/kernel/preinst.d/dkms:755 \
	/etc/kernel/prerm.d/dkms:$(DIST)/debian/kernel/prerm.d/dkms:755 \
	/usr/lib/kernel/install.d/40-dkms.install:$(DIST)/kernel-install/40-dkms.install.debian:755
RPM_FILES := \
	/usr/lib/kernel/install.d/40-dkms.install:$(DIST)/kernel-install/40-dkms.install.rpm:755 \
	/usr/lib/systemd/system/dkms.service:$(DIST)/systemd/dkms.service:644
ARCH_FILES := \
	/usr/lib/kernel/install.d/40-dkms.install:$(DIST)/kernel-install/40-dkms.install.rpm:755 \
	/usr/share/libalpm/hooks/70-dkms-install.hook:$(DIST)/pacman/70-dkms-install.hook:644 \
	/usr/share/libalpm/hooks/71-dkms-remove.hook:$(DIST)/pacman/71-dkms-remove.hook:644 \
	/usr/lib/dkms/dkms-pacman:$(DIST)/pacman/dkms-pacman:755

ifeq ($(FAMILY),debian)
FILES := $(COMMON_FILES) $(DEBIAN_FILES)
else ifeq ($(FAMILY),rpm)
FILES := $(COMMON_FILES) $(RPM_FILES)
else ifeq ($(FAMILY),arch)
FILES := $(COMMON_FILES) $(ARCH_FILES)
else
$(error FAMILY must be debian, rpm or arch (got '$(FAMILY)'))
endif

SCRIPTS := $(DIST)/common/common.postinst $(DIST)/common/dkms_autoinstaller \
	$(DIST)/debian/kernel/postinst.d/dkms $(DIST)/debian/kernel/preinst.d/dkms \
	$(DIST)/debian/kernel/prerm.d/dkms $(DIST)/kernel-install/40-dkms.install.debian \
	$(DIST)/kernel-install/40-dkms.install.rpm $(DIST)/pacman/dkms-pacman

.PHONY: help install-integration uninstall-integration check-integration

help:
	@sed -n '2,13s/^# \{0,1\}//p' $(firstword $(MAKEFILE_LIST))

install-integration:
	@set -e; for entry in $(FILES); do \
		dest=$${entry%%:*}; rest=$${entry#*:}; src=$${rest%%:*}; mode=$${rest##*:}; \
		echo "install -m $$mode $$src $(DESTDIR)$$dest"; \
		$(INSTALL) -D -m "$$mode" "$$src" "$(DESTDIR)$$dest"; \
	done
	@set -e; conf="$(DESTDIR)/etc/dkms/framework.conf"; \
	$(INSTALL) -d "$(DESTDIR)/etc/dkms/framework.conf.d"; \
	if [ ! -e "$$conf" ]; then \
		echo "install -m 644 $(DIST)/etc/framework.conf $$conf"; \
		$(INSTALL) -m 644 "$(DIST)/etc/framework.conf" "$$conf"; \
	elif ! cmp -s "$(DIST)/etc/framework.conf" "$$conf"; then \
		echo "keeping $$conf (changed locally); the shipped defaults are in $(DIST)/etc/framework.conf"; \
	fi
ifeq ($(WRAPPER),yes)
	@set -e; py=$$(command -v '$(PYTHON)') || { echo "PYTHON=$(PYTHON) is not an interpreter in PATH" >&2; exit 1; }; \
	"$$py" -c 'import pydkms' 2>/dev/null \
		|| echo "warning: $$py cannot import pydkms yet: install it (pip install .) before using dkms" >&2; \
	echo "install -m 755 (wrapper running $$py -m pydkms) $(DESTDIR)/usr/sbin/dkms"; \
	$(INSTALL) -d "$(DESTDIR)/usr/sbin"; \
	tmp="$(DESTDIR)/usr/sbin/.dkms.tmp"; \
	printf '#!/bin/sh\n# dkms: pydkms, installed by make install-integration\nexec %s -m pydkms "$$@"\n' \
		"'$$py'" >"$$tmp"; \
	chmod 755 "$$tmp"; mv -f "$$tmp" "$(DESTDIR)/usr/sbin/dkms"
endif

uninstall-integration:
	@for entry in $(FILES); do \
		dest=$${entry%%:*}; echo "rm -f $(DESTDIR)$$dest"; rm -f "$(DESTDIR)$$dest"; \
	done
	@conf="$(DESTDIR)/etc/dkms/framework.conf"; \
	if cmp -s "$(DIST)/etc/framework.conf" "$$conf"; then echo "rm -f $$conf"; rm -f "$$conf"; \
	elif [ -e "$$conf" ]; then echo "keeping $$conf (changed locally)"; fi; \
	rmdir "$(DESTDIR)/etc/dkms/framework.conf.d" "$(DESTDIR)/etc/dkms" 2>/dev/null || true
ifeq ($(WRAPPER),yes)
	@if grep -qs 'installed by make install-integration' "$(DESTDIR)/usr/sbin/dkms"; then \
		echo "rm -f $(DESTDIR)/usr/sbin/dkms"; rm -f "$(DESTDIR)/usr/sbin/dkms"; fi
endif

check-integration:
	@if command -v shellcheck >/dev/null 2>&1; then \
		shellcheck -s sh $(SCRIPTS) && echo "shellcheck: clean"; \
	else echo "shellcheck is not installed: nothing checked"; fi
