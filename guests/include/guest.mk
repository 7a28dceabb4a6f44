# Build rules shared by pvdbg's 32-bit PAE PV test guests (seed, scenarios, security, fuzz).
#
# A guest Makefile sets SRC_DIR (its own directory, with a trailing slash), then includes
# this file.  Optional, before the include:
#   GUEST_OPT        optimisation level (default -O1)
#   GUEST_ARCH_EXTRA extra code-generation flags
#   GUEST_INCLUDES   its own -I flags (default: its directory and the seed kernel's headers)
#   GUEST_NAMES      one ELF per name: $(O)/<name>.elf links GUEST_COMMON and <name>.o
#   GUEST_COMMON     objects every such ELF links first (head.o first: _start at VIRT_BASE)
#   GUEST_LDS        the linker script of those ELFs
# Every guest also gets guests/include (xen-notes.h), and $(O)/lib.o from the seed's
# lib.c (printk) unless the guest has its own lib.c.
#
#   make            build into $(O) (default build)
#   make O=dir      build into another directory
#   make clean      remove $(O)
#   WERROR=0        keep going on compiler warnings

O ?= build
CC := gcc
WERROR ?= 1

GUEST_INCLUDE_DIR := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))/
SEED_DIR := $(SRC_DIR)../seed/
GUEST_OPT ?= -O1
GUEST_INCLUDES ?= -I$(SRC_DIR) -I$(SEED_DIR)include

ARCH_FLAGS := -m32 -ffreestanding -nostdlib -fno-pic -no-pie $(GUEST_OPT) -g \
	-fno-omit-frame-pointer -fno-stack-protector -mno-sse -mno-mmx \
	-fcf-protection=none $(GUEST_ARCH_EXTRA)
# CFI goes to .debug_frame (unloaded) instead of .eh_frame.
CFLAGS := $(ARCH_FLAGS) -std=gnu11 -Wall -Wextra $(if $(filter 1,$(WERROR)),-Werror) \
	-fno-asynchronous-unwind-tables -fno-unwind-tables -fno-common
CPPFLAGS := $(GUEST_INCLUDES) -I$(GUEST_INCLUDE_DIR) -MMD -MP
ASFLAGS := $(ARCH_FLAGS) -D__ASSEMBLY__ -Wa,--fatal-warnings
LDFLAGS := -m32 -nostdlib -no-pie -static -Wl,--build-id=none -Wl,-z,noexecstack \
	-Wl,--orphan-handling=error -Wl,--fatal-warnings

.DEFAULT_GOAL := all
.PHONY: all clean

ifneq ($(GUEST_NAMES),)
all: $(GUEST_NAMES:%=$(O)/%.elf)

$(O)/%.elf: $(O)/%.o $(GUEST_COMMON) $(GUEST_LDS)
	$(CC) $(LDFLAGS) -Wl,-T,$(GUEST_LDS) -o $@ $(GUEST_COMMON) $<

.SECONDARY: $(GUEST_NAMES:%=$(O)/%.o)
endif

ifeq ($(wildcard $(SRC_DIR)lib.c),)
$(O)/lib.o: $(SEED_DIR)lib.c | $(O)
	$(CC) $(CFLAGS) $(CPPFLAGS) -c $< -o $@
endif

$(O)/%.o: $(SRC_DIR)%.c | $(O)
	$(CC) $(CFLAGS) $(CPPFLAGS) -c $< -o $@

$(O)/%.o: $(SRC_DIR)%.S | $(O)
	$(CC) $(ASFLAGS) $(CPPFLAGS) -c $< -o $@

$(O):
	mkdir -p $@

clean:
	rm -rf $(O)
