using CriuSharp.SimKernel.Uffd;

namespace CriuSharp.SimKernel.Mm;

/// <summary>
/// The non-cooperative userfaultfd events of the mmap family (fs/userfaultfd.c): UNMAP for a
/// registered range that munmap, mmap(MAP_FIXED), mremap or brk removes, REMAP for an mremap that
/// moves one, REMOVE for madvise(MADV_DONTNEED/MADV_FREE) over one — each only to a context that
/// negotiated the feature at UFFDIO_API.
/// <para>
/// As in the kernel, unmap events are gathered while the address space changes
/// (userfaultfd_unmap_prep: one per context and range, the range being the whole munmap request)
/// and delivered when the system call is done with it (userfaultfd_unmap_complete); mremap delivers
/// the unmaps of its destination first, then REMAP, then the unmap of the old range
/// (mm/mremap.c notify_uffd). REMOVE goes out before the pages are zapped (userfaultfd_remove).
/// </para>
/// </summary>
public sealed partial class MmStruct
{
    /// <summary>Unmap events gathered by the running system call, not yet delivered.</summary>
    private List<(Userfaultfd Ctx, ulong Start, ulong End)> _unmapEvents = [];

    /// <summary>userfaultfd_unmap_prep for every registered VMA of [start, end) about to go.</summary>
    private void PrepUnmapEvents(ulong start, ulong end)
    {
        for (int i = FirstEndingAbove(start); i < _vmas.Count && _vmas[i].Start < end; i++)
            if (_vmas[i].Uffd is { } ctx)
                PrepUnmapEvent(ctx, start, end);
    }

    private void PrepUnmapEvent(Userfaultfd ctx, ulong start, ulong end)
    {
        if ((ctx.Features & UffdConstants.FeatureEventUnmap) == 0)
            return;
        // has_unmap_ctx: one event per context and range.
        foreach (var (c, s, e) in _unmapEvents)
            if (ReferenceEquals(c, ctx) && s == start && e == end)
                return;
        _unmapEvents.Add((ctx, start, end));
    }

    /// <summary>Takes the unmap events gathered so far (mremap keeps its early ones apart).</summary>
    private List<(Userfaultfd Ctx, ulong Start, ulong End)> TakeUnmapEvents()
    {
        var taken = _unmapEvents;
        _unmapEvents = [];
        return taken;
    }

    /// <summary>userfaultfd_unmap_complete: each event is queued and waits for the monitor to read it.</summary>
    private void CompleteUnmapEvents(List<(Userfaultfd Ctx, ulong Start, ulong End)> events)
    {
        foreach (var (ctx, s, e) in events)
            ctx.Event(UffdMsg.Unmap(s, e), Current);
    }

    private void CompleteUnmapEvents() => CompleteUnmapEvents(TakeUnmapEvents());

    /// <summary>
    /// userfaultfd_remove for madvise(MADV_DONTNEED/MADV_FREE) over [start, end): one REMOVE per
    /// registered VMA piece, before the zap, up to the first VMA the advice refuses (the kernel
    /// stops there with EINVAL before it would have sent that VMA's event).
    /// </summary>
    private void RemoveEvents(ulong start, ulong end, Func<VmArea, bool> refused)
    {
        var events = new List<(Userfaultfd, ulong, ulong)>();
        for (int i = FirstEndingAbove(start); i < _vmas.Count && _vmas[i].Start < end; i++)
        {
            var v = _vmas[i];
            if (refused(v))
                break;
            if (v.Uffd is { } ctx && (ctx.Features & UffdConstants.FeatureEventRemove) != 0)
                events.Add((ctx, Math.Max(start, v.Start), Math.Min(end, v.End)));
        }
        foreach (var (ctx, s, e) in events)
            ctx.Event(UffdMsg.Remove(s, e), Current);
    }

    /// <summary>
    /// mremap_userfaultfd_prep for the VMA a move created: it stays registered when the context
    /// takes REMAP events; otherwise the registration is dropped from it (with the uffd-wp bits of
    /// the entries that moved, as move_ptes clears them), so its missing pages fault as ordinary ones.
    /// Returns the context to send REMAP to, or null.
    /// </summary>
    private Userfaultfd? RemapPrep(VmArea moved)
    {
        if (moved.Uffd is not { } ctx)
            return null;
        if ((ctx.Features & UffdConstants.FeatureEventRemap) != 0)
            return ctx;
        SetUffdWp(moved, moved.Start, moved.End, false, false);
        moved.Uffd = null;
        moved.Flags &= ~(VmaFlags.UffdWp | VmaFlags.UffdMissing);
        return null;
    }
}
