/* Hide AVX-512, VNNI and AMX from the CPUID reads a process makes once this library's constructor has run, so
 * that the libraries it loads or initialises later (torch's cpuinfo, oneDNN, ONNX Runtime's MLAS, numpy) pick their
 * AVX2 kernels on an AVX-512 CPU. Detection that ran earlier is not changed: the dynamic loader's (glibc's IFUNCs,
 * such as memcpy's AVX-512 version, and <sys/platform/x86.h>) and the constructors of the libraries the program is
 * linked against. Loaded with LD_PRELOAD by benchmarks/run_as_avx2.py, which builds it; see docs/benchmarks.md.
 *
 * How: Linux's arch_prctl(ARCH_SET_CPUID, 0) makes the CPUID instruction fault in this thread and in every thread
 * and fork made from it (CPUs with CPUID faulting: "cpuid_fault" in /proc/cpuinfo). The SIGSEGV handler below runs
 * the real CPUID with faulting briefly off, clears the feature bits listed in hide(), writes the result into the
 * faulting thread's registers and steps over the two-byte instruction. Any other SIGSEGV goes to the handler the
 * program installed (sigaction and signal are wrapped so that installing one never replaces ours) or to the
 * default action, so a real crash still crashes. XGETBV is not touched: the OS still saves the AVX-512 registers,
 * which is what an AVX2-only CPU's software never asks about once CPUID says there is no AVX-512.
 */
#define _GNU_SOURCE
#include <asm/prctl.h>
#include <cpuid.h>
#include <dlfcn.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

typedef int (*sigaction_fn)(int, const struct sigaction *, struct sigaction *);

static sigaction_fn real_sigaction;
static struct sigaction program_handler; /* what the program asked for on SIGSEGV (SIG_DFL until it asks) */

static long set_cpuid_enabled(unsigned long enabled) { return syscall(SYS_arch_prctl, ARCH_SET_CPUID, enabled); }

static void hide(uint32_t leaf, uint32_t subleaf, uint32_t r[4]) {
    if (leaf == 7 && subleaf == 0) {
        /* EBX: AVX512F 16, DQ 17, IFMA 21, PF 26, ER 27, CD 28, BW 30, VL 31 */
        r[1] &= ~((1u << 16) | (1u << 17) | (1u << 21) | (1u << 26) | (1u << 27) | (1u << 28) | (1u << 30) |
                  (1u << 31));
        /* ECX: VBMI 1, VBMI2 6, VNNI 11, BITALG 12, VPOPCNTDQ 14 */
        r[2] &= ~((1u << 1) | (1u << 6) | (1u << 11) | (1u << 12) | (1u << 14));
        /* EDX: 4VNNIW 2, 4FMAPS 3, VP2INTERSECT 8, FP16 23, AMX-BF16 22, AMX-TILE 24, AMX-INT8 25 */
        r[3] &= ~((1u << 2) | (1u << 3) | (1u << 8) | (1u << 22) | (1u << 23) | (1u << 24) | (1u << 25));
    } else if (leaf == 7 && subleaf == 1) {
        /* EAX: AVX-VNNI 4, AVX512_BF16 5, AVX-IFMA 23; EDX: AVX-VNNI-INT8 4, AVX-NE-CONVERT 5, AVX10 19 */
        r[0] &= ~((1u << 4) | (1u << 5) | (1u << 23));
        r[3] &= ~((1u << 4) | (1u << 5) | (1u << 19));
    } else if (leaf == 0xD && subleaf == 0) {
        r[0] &= ~(7u << 5); /* XSAVE components opmask, ZMM_Hi256, Hi16_ZMM */
    } else if (leaf == 0x24) {
        r[0] = r[1] = r[2] = r[3] = 0; /* AVX10 */
    }
}

static void to_program(int sig, siginfo_t *info, void *context) {
    if (program_handler.sa_flags & SA_SIGINFO) {
        program_handler.sa_sigaction(sig, info, context);
    } else if (program_handler.sa_handler != SIG_DFL && program_handler.sa_handler != SIG_IGN) {
        program_handler.sa_handler(sig);
    } else { /* default action: returning re-runs the faulting instruction, which now kills the process */
        struct sigaction dfl;
        memset(&dfl, 0, sizeof dfl);
        dfl.sa_handler = SIG_DFL;
        real_sigaction(SIGSEGV, &dfl, NULL);
    }
}

static void on_segv(int sig, siginfo_t *info, void *context) {
    ucontext_t *uc = context;
    greg_t *regs = uc->uc_mcontext.gregs;
    const unsigned char *ip = (const unsigned char *)regs[REG_RIP];
    if (info->si_code != SI_KERNEL || ip[0] != 0x0F || ip[1] != 0xA2) { /* not a faulting CPUID */
        to_program(sig, info, context);
        return;
    }
    uint32_t r[4], leaf = (uint32_t)regs[REG_RAX], subleaf = (uint32_t)regs[REG_RCX];
    set_cpuid_enabled(1);
    __cpuid_count(leaf, subleaf, r[0], r[1], r[2], r[3]);
    set_cpuid_enabled(0);
    hide(leaf, subleaf, r);
    regs[REG_RAX] = r[0]; /* CPUID zero-extends into the 64-bit registers */
    regs[REG_RBX] = r[1];
    regs[REG_RCX] = r[2];
    regs[REG_RDX] = r[3];
    regs[REG_RIP] += 2;
}

int sigaction(int sig, const struct sigaction *act, struct sigaction *old) {
    if (sig != SIGSEGV || real_sigaction == NULL) {
        return real_sigaction ? real_sigaction(sig, act, old)
                              : ((sigaction_fn)dlsym(RTLD_NEXT, "sigaction"))(sig, act, old);
    }
    if (old != NULL) *old = program_handler;
    if (act != NULL) program_handler = *act;
    return 0;
}

sighandler_t signal(int sig, sighandler_t handler) {
    struct sigaction act, old;
    memset(&act, 0, sizeof act);
    act.sa_handler = handler;
    act.sa_flags = SA_RESTART;
    sigemptyset(&act.sa_mask);
    return sigaction(sig, &act, &old) == 0 ? old.sa_handler : SIG_ERR;
}

__attribute__((constructor)) static void start(void) {
    real_sigaction = (sigaction_fn)dlsym(RTLD_NEXT, "sigaction");
    memset(&program_handler, 0, sizeof program_handler);
    program_handler.sa_handler = SIG_DFL;
    struct sigaction ours;
    memset(&ours, 0, sizeof ours);
    ours.sa_sigaction = on_segv;
    ours.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&ours.sa_mask);
    if (real_sigaction(SIGSEGV, &ours, NULL) != 0 || set_cpuid_enabled(0) != 0) {
        static const char message[] = "hide_avx512: this CPU or kernel cannot make CPUID fault; nothing is hidden\n";
        if (write(2, message, sizeof message - 1) < 0) { /* nothing more to do */ }
        _exit(3);
    }
}
