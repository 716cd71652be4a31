// SPDX-License-Identifier: GPL-2.0
/*
 * hello - the example module bundled with pydkms.
 *
 * It does nothing but log one line when it is loaded and one when it is
 * removed, which is enough to show a whole dkms life cycle (add, build,
 * install, load, uninstall, remove).
 */
#include <linux/init.h>
#include <linux/kernel.h>
#include <linux/module.h>

static int __init hello_init(void)
{
	pr_info("hello: HELLO_DKMS_TEST loaded (version 1.0)\n");
	return 0;
}

static void __exit hello_exit(void)
{
	pr_info("hello: HELLO_DKMS_TEST unloaded\n");
}

module_init(hello_init);
module_exit(hello_exit);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("pydkms developers");
MODULE_DESCRIPTION("pydkms example module: logs a line on load and unload");
MODULE_VERSION("1.0");
