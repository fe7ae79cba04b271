using CriuSharp.ImageFormat;

namespace CriuSharp.Dumper;

/// <summary>CRIU's --timeout and --pre-dump-mode for one pre-dump or dump.</summary>
internal sealed partial class Checkpointer
{
    /// <summary>
    /// CRIU's --timeout: criu/seize.c arms alarm(opts.timeout) around collecting and freezing the
    /// tree, and a dump whose collection outlasts it fails ("Timeout reached") with the tree thawed.
    /// The time is the freeze's cost in the kernel's virtual time (the cost model); on a kernel
    /// that cannot restore (the real host, whose clock runs by itself) it is the wall time the
    /// freeze took. The frozen tree waits out the limit, then the caller's thaw runs.
    /// </summary>
    private void CheckTimeout(ulong freezeNs, TimeSpan freezeWall)
    {
        if (_o.TimeoutSeconds == 0)
            return;
        ulong limitNs = _o.TimeoutSeconds * 1_000_000_000UL;
        ulong tookNs = _k.Capabilities.CanRestore ? freezeNs : (ulong)freezeWall.Ticks * 100;
        if (tookNs <= limitNs)
            return;
        _k.LetTimePass(limitNs);
        throw new DumperException(
            $"timeout reached: collecting and freezing the tree takes {tookNs / 1e9:0.###} s, more than --timeout {_o.TimeoutSeconds} s; the tree was thawed",
            _o.Pid, _o.ImagesDir, kind: DumperErrorKind.Timeout);
    }

    /// <summary>The parent image set is a pre-dump taken in read mode (its inventory's pre_dump_mode).</summary>
    private static bool ParentWasReadMode(ImageSet? parent)
    {
        if (parent is null)
            return false;
        var inv = parent.ReadInventory();
        return inv.HasPreDumpMode && inv.PreDumpMode == (uint)PreDumpMode.Read;
    }

    /// <summary>
    /// Read mode, after the thaw: copies the pages the pipe reserved (process_vm_readv while the
    /// tree runs). Returns the modelled time of the copy, which memdump time includes and frozen
    /// time does not.
    /// </summary>
    private ulong ReadDeferred(int pid, PagePipe pipe)
    {
        long copied = pipe.FillDeferred((va, dst) => _k.ReadMemory(pid, va, dst));
        return CostModel.Ns(copied, _cost.CopyBytesPerSecond);
    }
}
