namespace CriuSharp.KernelApi;

/// <summary>prctl(PR_SET_MM, ...) fields a restorer sets (kernel/sys.c prctl_set_mm).</summary>
public enum PrctlMmField
{
    StartCode = 1, EndCode = 2, StartData = 3, EndData = 4, StartStack = 5, StartBrk = 6, Brk = 7,
    ArgStart = 8, ArgEnd = 9, EnvStart = 10, EnvEnd = 11,
}
