// SPDX-License-Identifier: GPL-2.0
/*
 * pvmc_marker: a module that only logs a marker line when it loads and unloads. CI builds it
 * out of tree against Debian's kernel headers (`cargo xtask kmod build`) and a host image
 * loads it with the profile's parameters, which proves the build-and-load path a vendor's
 * PVM host module takes (host-kmod/README.md).
 */
#include <linux/init.h>
#include <linux/kernel.h>
#include <linux/module.h>

static int level = 1;
module_param(level, int, 0444);
MODULE_PARM_DESC(level, "a number the marker line echoes (proves parameters reach the module)");

static int __init pvmc_marker_init(void)
{
	pr_info("pvmc-marker: loaded (level=%d)\n", level);
	return 0;
}

static void __exit pvmc_marker_exit(void)
{
	pr_info("pvmc-marker: unloaded\n");
}

module_init(pvmc_marker_init);
module_exit(pvmc_marker_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("pvm-conformance: build-and-load marker");
