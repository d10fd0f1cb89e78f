/* SPDX-License-Identifier: GPL-2.0 */
/*
 * What sdxi_probe needs of the SDXi register layout, one directory above the driver so the
 * bring-up test builds a tree whose sources include a parent-directory header.
 * SNIA SDXI 1.0: class code 0x120100 (PCI Code and ID Assignment 1.19), MMIO_VERSION at
 * offset 0x210 of BAR0 (Table 9-8).
 */
#ifndef SDXI_PROBE_REGS_H
#define SDXI_PROBE_REGS_H

#define SDXI_PROBE_CLASS 0x120100
#define SDXI_PROBE_MMIO_VERSION 0x210

#endif
