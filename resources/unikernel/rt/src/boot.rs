//! Ring-0 boot: both entry points, the static CPU tables, and the switch to ring 3.
//!
//! Under kvm_pvm every ring-0 instruction is emulated (about 1 µs each), so ring 0
//! only loads tables that the assembler and linker built as static data (identity
//! page tables for the first 4 GiB, GDT, TSS with an all-ports I/O bitmap, IDT) and
//! `iretq`s to ring 3 with IOPL 3: 27 instructions from the Linux entry, 40 from PVH.
//! Exceptions land in short ring-0 stubs that print the vector and the faulting `rip`
//! on the serial port and reset, so a bug shows instead of a silent triple fault.
//! Two exceptions to that: the `ud2` of the wait gate (see [`crate::irq`]) sleeps in
//! `hlt` and returns (7 instructions; 10 at the timed gate, which arms the
//! TSC-deadline timer first), and interrupts (vectors 32-63: devices and the APIC
//! timer) only signal end-of-interrupt (5 instructions).

use core::arch::{asm, global_asm};
use core::panic::PanicInfo;

use crate::bootinfo::{BootInfo, Protocol};
use crate::io::reset;
use crate::println;

unsafe extern "Rust" {
    /// The guest's main function, defined by [`crate::entry!`].
    fn ember_main(boot: &BootInfo) -> !;
}

// Selectors: 0x08 kernel code64, 0x10 kernel data, 0x18 user data, 0x20 user code64,
// 0x28 TSS. Page-table entries are Present|RW|User (ring 3 touches RAM and MMIO).
global_asm!(
    r#"
    .section .text.ember_boot, "ax", @progbits

    .code64
    .globl ember_linux64_entry
ember_linux64_entry:                # long mode, rsi = boot_params
    cli
    mov %rsi, %rdi
    xor %esi, %esi                  # protocol 0: Linux
    jmp ember_common64

    .code32
    .globl ember_pvh_entry
ember_pvh_entry:                    # protected mode, paging off, ebx = hvm_start_info
    cli
    lgdt ember_gdt_ptr
    mov $ember_pml4, %eax
    mov %eax, %cr3
    mov %cr4, %eax
    or $0x20, %eax                  # CR4.PAE
    mov %eax, %cr4
    mov $0xc0000080, %ecx           # EFER
    rdmsr
    or $0x100, %eax                 # EFER.LME
    wrmsr
    mov %cr0, %eax
    or $0x80000001, %eax            # CR0.PG | CR0.PE: long mode is active
    mov %eax, %cr0
    ljmp $0x08, $ember_pvh64

    .code64
ember_pvh64:
    mov %ebx, %edi
    mov $1, %esi                    # protocol 1: PVH
ember_common64:                     # CS is stale on the Linux path; iretq replaces it
    lgdt ember_gdt_ptr(%rip)
    mov $0x28, %ax
    ltr %ax
    lidt ember_idt_ptr(%rip)
    lea ember_pml4(%rip), %rax
    mov %rax, %cr3
    mov %cr4, %rax
    and $~0x300000, %rax            # no SMEP/SMAP: ring 0 runs from user pages
    or $0x620, %rax                 # PAE, OSFXSR, OSXMMEXCPT: Rust code uses SSE
    mov %rax, %cr4
    mov %cr0, %rax
    and $~0xc, %rax                 # clear EM and TS
    or $0x2, %rax                   # set MP
    mov %rax, %cr0
    lea ember_ring0_stack_top(%rip), %rsp
    push $0x1b                      # SS: user data | 3
    lea ember_user_stack_top-8(%rip), %rax
    push %rax                       # RSP as after a call (SysV alignment)
    push $0x3002                    # RFLAGS: IOPL 3, IF 0
    push $0x23                      # CS: user code64 | 3
    lea {start}(%rip), %rax
    push %rax
    iretq

    # One 16-byte stub per vector (the IDT computes their addresses); 512-aligned
    # so all share the upper address bits.
    .balign 512
    .globl ember_exc_stubs
ember_exc_stubs:
    .set ember_vec, 0
    .rept 32
    .balign 16
    push $ember_vec
    jmp ember_exc_common
    .set ember_vec, ember_vec + 1
    .endr

ember_exc_common:                   # prints the vector and rip, then resets
    cld
    pop %rbx                        # vector
    mov $0x3f8, %dx
    lea ember_exc_msg(%rip), %rsi
    call ember_puts
    mov %ebx, %eax
    mov $10, %cl
    div %cl
    test %al, %al
    jz 1f
    add $0x30, %al
    out %al, %dx
1:
    mov %ah, %al
    add $0x30, %al
    out %al, %dx
    lea ember_rip_msg(%rip), %rsi
    call ember_puts
    xor %ecx, %ecx                  # rip is above the error code, if any:
    mov $0x60227d00, %eax           # vectors 8, 10-14, 17, 21, 29, 30 push one
    bt %ebx, %eax
    adc $0, %ecx
    mov (%rsp,%rcx,8), %rbx
    lea ember_hex(%rip), %rsi
    mov $16, %ecx
2:
    rol $4, %rbx
    mov %ebx, %eax
    and $0xf, %eax
    movzbl (%rsi,%rax), %eax
    out %al, %dx
    dec %ecx
    jnz 2b
    mov $0x0a, %al
    out %al, %dx
    mov $0xfe, %al                  # i8042 reset
    out %al, $0x64
3:
    hlt
    jmp 3b

    # #UD: the wait gates' ud2 (see irq.rs) wait for an interrupt and return
    # past it; any other #UD is a fault. The timed gate first arms the TSC-deadline
    # timer: ring 3 loaded wrmsr's operands (trusted as all of ring 3 is: it owns
    # the page tables anyway).
    .globl ember_ud_entry
ember_ud_entry:
    cmpq $ember_wait_gate, (%rsp)
    je 1f
    cmpq $ember_timed_wait_gate, (%rsp)
    jne ember_exc_stubs + 6 * 16
    wrmsr
1:
    addq $2, (%rsp)
    sti                             # hlt runs in sti's interrupt shadow, so an
    hlt                             # interrupt pending since ring 3 ends it at once
    cli
    iretq

    # Device and timer interrupts only need an end-of-interrupt: the interrupted
    # code (the wait gate, or ring 3) looks at its queues and clock itself.
    .globl ember_irq_entry
ember_irq_entry:
    push %rax
    mov $0xfee000b0, %eax           # local APIC EOI register
    movl $0, (%rax)
    pop %rax
    iretq

ember_puts:
    lodsb
    test %al, %al
    jz 1f
    out %al, %dx
    jmp ember_puts
1:
    ret

    .section .rodata.ember_boot, "a", @progbits
ember_exc_msg:
    .asciz "guest: exception "
ember_rip_msg:
    .asciz "\nguest: rip=0x"
ember_hex:
    .ascii "0123456789abcdef"

    .section .data.ember_boot, "aw", @progbits
    # Identity map of the first 4 GiB with 2 MiB pages, Present|RW|User.
    .balign 4096
ember_pml4:
    .quad ember_pdpt + 0x7
    .fill 511, 8, 0
ember_pdpt:
    .quad ember_pd + 0x7
    .quad ember_pd + 0x1007
    .quad ember_pd + 0x2007
    .quad ember_pd + 0x3007
    .fill 508, 8, 0
ember_pd:
    .set ember_i, 0
    .rept 2048
    .quad (ember_i << 21) | 0x87
    .set ember_i, ember_i + 1
    .endr

    .balign 16
ember_gdt:
    .quad 0
    .quad 0x00af9a000000ffff
    .quad 0x00cf92000000ffff
    .quad 0x00cff2000000ffff
    .quad 0x00affa000000ffff
    # 64-bit TSS descriptor; the linker script splits the base into pieces.
    .word ember_tss_end - ember_tss - 1
    .word ember_tss_base_lo
    .byte ember_tss_base_mid
    .byte 0x89
    .byte 0
    .byte ember_tss_base_hi
    .quad 0
ember_gdt_end:
ember_gdt_ptr:
    .word ember_gdt_end - ember_gdt - 1
    .quad ember_gdt

    .balign 16                      # interrupt gates, DPL 0, kernel CS
ember_idt:
    .set ember_i, 0
    .rept 32                        # exceptions; #UD may be the wait gate
    .if ember_i == 6
    .word ember_ud_lo
    .else
    .word ember_exc_lo + ember_i * 16
    .endif
    .word 0x08
    .byte 0
    .byte 0x8e
    .if ember_i == 6
    .word ember_ud_hi
    .else
    .word ember_exc_hi
    .endif
    .quad 0
    .set ember_i, ember_i + 1
    .endr
    .rept 32                        # 32-63: IOAPIC pins, APIC timer and spurious vector
    .word ember_irq_lo
    .word 0x08
    .byte 0
    .byte 0x8e
    .word ember_irq_hi
    .quad 0
    .endr
ember_idt_ptr:
    .word 64 * 16 - 1
    .quad ember_idt

    .balign 16
    .globl ember_tss
ember_tss:
    .long 0
    .quad ember_ring0_stack_top     # rsp0: exceptions from ring 3 land here
    .fill 11, 8, 0
    .word 0
    .word 104                       # I/O bitmap right after the TSS:
    .fill 8192, 1, 0                # every port allowed in ring 3 (IOPL alone
    .byte 0xff                      # does not survive a ring-0 return on kvm_pvm)
ember_tss_end:

    .section .bss.ember_boot, "aw", @nobits
    .balign 16
    .skip 4096
ember_ring0_stack_top:
    .skip 65536
ember_user_stack_top:

    # XEN_ELFNOTE_PHYS32_ENTRY: makes PVH loaders enter at ember_pvh_entry.
    .section .note.Xen, "a", @note
    .balign 4
    .long 4
    .long 8
    .long 18
    .asciz "Xen"
    .balign 4
    .quad ember_pvh_entry

    # The wait gate, called from ring 3: ember_ud_entry recognises this ud2.
    .text
    .globl ember_wait_for_interrupt
ember_wait_for_interrupt:
ember_wait_gate:
    ud2
    ret

    # The timed wait gate, called from ring 3 with the TSC deadline in rdi: the
    # operands of wrmsr are loaded here, natively, rather than in ring 0.
    .globl ember_wait_until
ember_wait_until:
    mov %edi, %eax
    mov %rdi, %rdx
    shr $32, %rdx
    mov $0x6e0, %ecx                # IA32_TSC_DEADLINE
ember_timed_wait_gate:
    ud2
    ret
"#,
    start = sym ember_rt_start,
    options(att_syntax)
);

/// First Rust code, in ring 3: `info` is the VMM's boot structure (`boot_params` or
/// `hvm_start_info`), `protocol` is 1 when entered through the PVH note.
#[unsafe(no_mangle)]
extern "C" fn ember_rt_start(info: u64, protocol: u64) -> ! {
    let protocol = if protocol == 1 {
        Protocol::Pvh
    } else {
        Protocol::Linux64
    };
    // SAFETY: `info` is the VMM's boot structure, handed over unchanged by the entry
    // code, and the identity map covers it.
    match unsafe { BootInfo::parse(protocol, info) } {
        // SAFETY: `entry!` defines `ember_main` with exactly this signature.
        Ok(boot) => unsafe { ember_main(&boot) },
        Err(err) => {
            println!("guest: error {err}");
            reset()
        }
    }
}

#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    if crate::function::in_function() {
        crate::function::recover(info);
    }
    match info.location() {
        Some(at) => println!(
            "guest: panic {} at {}:{}",
            info.message(),
            at.file(),
            at.line()
        ),
        None => println!("guest: panic {}", info.message()),
    }
    reset()
}

/// Referenced by the precompiled `core` (built for unwinding); never called with
/// `panic = "abort"`.
#[unsafe(no_mangle)]
extern "C" fn rust_eh_personality() {}

/// Referenced by the cleanup paths of the precompiled `alloc` (built for
/// unwinding: `format!` and the like); never called with `panic = "abort"`.
#[unsafe(no_mangle)]
#[allow(non_snake_case)]
extern "C" fn _Unwind_Resume() -> ! {
    reset()
}

// The compiler emits calls to these; without std they come from nowhere else.
// `rep movsb`/`rep stosb` cannot be turned back into a call to themselves.

/// Copies `n` bytes between non-overlapping buffers.
///
/// # Safety
/// Both ranges must be valid for `n` bytes and must not overlap.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees both ranges are valid; rep movsb copies exactly
    // `n` bytes forward (the direction flag is clear by the ABI).
    unsafe {
        asm!("rep movsb", inout("rcx") n => _, inout("rdi") dest => _, inout("rsi") src => _,
            options(nostack, preserves_flags));
    }
    dest
}

/// Copies `n` bytes between possibly overlapping buffers.
///
/// # Safety
/// Both ranges must be valid for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memmove(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dest as usize).wrapping_sub(src as usize) >= n {
        // SAFETY: the caller guarantees validity; a forward copy is correct when
        // `dest` does not start inside `src..src + n`.
        return unsafe { memcpy(dest, src, n) };
    }
    // SAFETY: the caller guarantees validity; copying backwards from the last byte
    // is correct when `dest` starts inside the source, and `cld` restores the flag.
    unsafe {
        asm!("std", "rep movsb", "cld", inout("rcx") n => _,
            inout("rdi") dest.wrapping_add(n).wrapping_sub(1) => _,
            inout("rsi") src.wrapping_add(n).wrapping_sub(1) => _, options(nostack));
    }
    dest
}

/// Fills `n` bytes with the low byte of `c`.
///
/// # Safety
/// The range must be valid for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memset(dest: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees the range is valid; rep stosb writes exactly `n`
    // bytes forward.
    unsafe {
        asm!("rep stosb", inout("rcx") n => _, inout("rdi") dest => _, in("al") c.to_le_bytes()[0],
            options(nostack, preserves_flags));
    }
    dest
}

/// Compares `n` bytes, returning the difference of the first differing pair.
///
/// # Safety
/// Both ranges must be valid for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i < n {
        // SAFETY: `i < n` and the caller guarantees both ranges hold `n` bytes.
        let (x, y) = unsafe { (*a.add(i), *b.add(i)) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
        i += 1;
    }
    0
}

/// Compares `n` bytes for equality only (zero when equal).
///
/// # Safety
/// Both ranges must be valid for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract as memcmp.
    unsafe { memcmp(a, b, n) }
}
