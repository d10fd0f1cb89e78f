// SPDX-License-Identifier: GPL-2.0
/*
 * sdxi_probe: a minimal out-of-tree PCI driver used by the test bed's bring-up test. It binds
 * to any SDXi function (class 0x120100), maps BAR0 and reads MMIO_VERSION (offset 0x210),
 * which it logs and exposes as the read-only module parameter "version".
 */
#include <linux/io.h>
#include <linux/module.h>
#include <linux/pci.h>

#include "../sdxi_regs.h"

static unsigned long version;
module_param(version, ulong, 0444);
MODULE_PARM_DESC(version, "MMIO_VERSION of the last SDXi function probed");

static void __iomem *bar0;

static int sdxi_probe_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	int rc = pci_enable_device(pdev);

	if (rc)
		return rc;
	bar0 = pci_iomap(pdev, 0, 0);
	if (!bar0) {
		pci_disable_device(pdev);
		return -ENOMEM;
	}
	version = readq(bar0 + SDXI_PROBE_MMIO_VERSION);
	pr_info("sdxi_probe: %s MMIO_VERSION %#lx\n", pci_name(pdev), version);
	return 0;
}

static void sdxi_probe_remove(struct pci_dev *pdev)
{
	pci_iounmap(pdev, bar0);
	pci_disable_device(pdev);
}

static const struct pci_device_id sdxi_probe_ids[] = {
	{ PCI_DEVICE_CLASS(SDXI_PROBE_CLASS, 0xffffff) },
	{ }
};
MODULE_DEVICE_TABLE(pci, sdxi_probe_ids);

static struct pci_driver sdxi_probe_driver = {
	.name = "sdxi_probe",
	.id_table = sdxi_probe_ids,
	.probe = sdxi_probe_probe,
	.remove = sdxi_probe_remove,
};
module_pci_driver(sdxi_probe_driver);

MODULE_DESCRIPTION("Reads an SDXi function's MMIO_VERSION (test-bed bring-up test)");
MODULE_LICENSE("GPL");
