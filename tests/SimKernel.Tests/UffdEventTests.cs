using System.Buffers.Binary;
using CriuSharp.KernelApi;
using CriuSharp.SimKernel.Uffd;
using Xunit;

namespace CriuSharp.SimKernel.Tests;

/// <summary>
/// The non-cooperative userfaultfd events against fs/userfaultfd.c (userfaultfd_api,
/// userfaultfd_unmap_prep/_complete, userfaultfd_remove, mremap_userfaultfd_prep/_complete,
/// userfaultfd_ctx_read, the mmap_changing check of userfaultfd_copy), mm/mremap.c (notify_uffd's
/// order) and the uffd_msg layout of include/uapi/linux/userfaultfd.h.
/// </summary>
public class UffdEventTests
{
    private const ulong Events = UffdConstants.FeatureEventRemap | UffdConstants.FeatureEventRemove | UffdConstants.FeatureEventUnmap;

    private static (Sim S, Userfaultfd U, ulong M) Registered(ulong pages, ulong features)
    {
        var s = new Sim();
        ulong m = s.Anon(pages);
        s.T.OpenUserfaultfd(out var u).OrThrow("userfaultfd");
        u!.ApiHandshake(UffdConstants.Api, features, out _).OrThrow("UFFDIO_API");
        u.Register(m, pages * s.PS, UffdConstants.RegisterModeMissing).OrThrow("UFFDIO_REGISTER");
        return (s, u, m);
    }

    private static List<byte[]> ReadRaw(Userfaultfd u)
    {
        var list = new List<byte[]>();
        var buf = new byte[UffdMsg.Size * 8];
        var r = u.Read(buf);
        for (int i = 0; r.Ok && i < r.Value; i += UffdMsg.Size)
            list.Add(buf[i..(i + UffdMsg.Size)]);
        return list;
    }

    private static byte[] Page(Sim s, byte fill)
    {
        var b = new byte[s.PS];
        Array.Fill(b, fill);
        return b;
    }

    private static ulong U64(byte[] raw, int at) => BinaryPrimitives.ReadUInt64LittleEndian(raw.AsSpan(at));

    [Fact]
    public void Api_OffersRemapRemoveUnmap_AndRefusesFork_AsAnUnknownBitIsRefused()
    {
        var s = new Sim();
        s.T.OpenUserfaultfd(out var u).OrThrow("userfaultfd");
        u!.ApiHandshake(UffdConstants.Api, Events, out ulong supported).OrThrow("api");
        Assert.Equal(Events, supported & Events);
        Assert.Equal(Events, u.Features);
        Assert.Equal(0UL, supported & UffdConstants.FeatureEventFork);
        s.T.OpenUserfaultfd(out var f).OrThrow("userfaultfd");
        Assert.Equal(Errno.EINVAL, f!.ApiHandshake(UffdConstants.Api, UffdConstants.FeatureEventFork | UffdConstants.FeatureEventUnmap, out ulong zeroed).Error);
        Assert.Equal(0UL, zeroed);
    }

    [Fact]
    public void Munmap_OfARegisteredRange_QueuesOneUnmapWithTheWholeRequest()
    {
        var (s, u, m) = Registered(8, UffdConstants.FeatureEventUnmap);
        // One munmap over two registered VMAs (the range is split by an unregister) is one event.
        u.Unregister(m + 3 * s.PS, s.PS).OrThrow("unregister");
        s.T.Munmap(m + 2 * s.PS, 4 * s.PS).OrThrow("munmap");
        var raw = Assert.Single(ReadRaw(u));
        Assert.Equal(UffdConstants.EventUnmap, raw[0]);
        Assert.Equal(0x16, raw[0]);
        Assert.All(raw[1..8], b => Assert.Equal(0, b));
        Assert.Equal(m + 2 * s.PS, U64(raw, 8));   // arg.remove.start
        Assert.Equal(m + 6 * s.PS, U64(raw, 16));  // arg.remove.end
        Assert.All(raw[24..], b => Assert.Equal(0, b));
        var msg = UffdMsg.Read(raw);
        Assert.Equal((m + 2 * s.PS, m + 6 * s.PS), (msg.RemoveStart, msg.RemoveEnd));
        // Unmapping memory that is not registered says nothing.
        ulong other = s.Anon(2);
        s.T.Munmap(other, 2 * s.PS).OrThrow("munmap");
        Assert.Empty(ReadRaw(u));
    }

    [Fact]
    public void Munmap_WithoutTheFeature_QueuesNothing()
    {
        var (s, u, m) = Registered(4, UffdConstants.FeatureEventRemap | UffdConstants.FeatureEventRemove);
        s.T.Munmap(m, 2 * s.PS).OrThrow("munmap");
        Assert.Empty(ReadRaw(u));
        Assert.Empty(u.PendingEvents);
    }

    [Fact]
    public void MapFixed_OverARegisteredRange_IsAnUnmap_AndTheNewMappingIsNotRegistered()
    {
        var (s, u, m) = Registered(4, Events);
        ulong at = (ulong)s.T.Mmap(m + s.PS, 2 * s.PS, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous | MapFlags.Fixed).OrThrow("mmap");
        Assert.Equal(m + s.PS, at);
        var msg = UffdMsg.Read(Assert.Single(ReadRaw(u)));
        Assert.Equal(UffdConstants.EventUnmap, msg.Event);
        Assert.Equal((m + s.PS, m + 3 * s.PS), (msg.RemoveStart, msg.RemoveEnd));
        // find_dst_vma: no registered VMA there any more.
        Assert.Equal(Errno.ENOENT, u.Copy(m + s.PS, Page(s, 1), 0, out long copy).Error);
        Assert.Equal(-(long)Errno.ENOENT, copy);
        // The new mapping faults as ordinary memory; the rest of the old one is still registered.
        Assert.Equal(0, s.R(m + s.PS));
        Assert.Empty(ReadRaw(u));
        u.Copy(m, Page(s, 7), 0, out _).OrThrow("copy");
        Assert.Equal(7, s.R(m));
    }

    [Fact]
    public void Copy_IntoAnUnmappedRange_IsEnoent()
    {
        var (s, u, m) = Registered(2, 0);
        s.T.Munmap(m, 2 * s.PS).OrThrow("munmap");
        Assert.Equal(Errno.ENOENT, u.Copy(m, Page(s, 1), 0, out long copy).Error);
        Assert.Equal(-(long)Errno.ENOENT, copy);
        Assert.Equal(Errno.ENOENT, u.ZeroPage(m + s.PS, s.PS, 0, out long zp).Error);
        Assert.Equal(-(long)Errno.ENOENT, zp);
    }

    [Fact]
    public void DontNeed_QueuesRemovePerVma_BeforeTheZap_AndTheMonitorRunsMeanwhile()
    {
        var (s, u, m) = Registered(6, UffdConstants.FeatureEventRemove);
        u.Copy(m + 2 * s.PS, Page(s, 9), 0, out _).OrThrow("copy");
        u.Unregister(m + 4 * s.PS, s.PS).OrThrow("split"); // two registered VMAs around an unregistered one
        var seen = new List<(byte Event, ulong Start, ulong End, bool PagePresent)>();
        u.SetMonitor(fd =>
        {
            var buf = new byte[UffdMsg.Size];
            while (fd.Read(buf) is { Ok: true })
            {
                var msg = UffdMsg.Read(buf);
                seen.Add((msg.Event, msg.RemoveStart, msg.RemoveEnd, (s.PM(m + 2 * s.PS) & PagemapBits.Present) != 0));
            }
        });
        s.Madv(m + s.PS, 5, Madvise.DontNeed).OrThrow("madvise");
        Assert.Equal(
            [(UffdConstants.EventRemove, m + s.PS, m + 4 * s.PS, true), (UffdConstants.EventRemove, m + 5 * s.PS, m + 6 * s.PS, true)],
            seen);
        Assert.Equal(0UL, s.PM(m + 2 * s.PS) & PagemapBits.Present); // zapped after the monitor read the event
        var raw = new byte[UffdMsg.Size];
        UffdMsg.Remove(1, 2).WriteTo(raw);
        Assert.Equal(0x15, raw[0]);
    }

    [Fact]
    public void MremapMove_WithRemap_QueuesUnmapOfTheDestinationThenRemapThenUnmapOfTheOldRange_AndStaysRegistered()
    {
        var (s, u, m) = Registered(4, Events);
        ulong dst = s.Anon(4);
        u.Register(dst, 4 * s.PS, UffdConstants.RegisterModeMissing).OrThrow("register dst");
        u.Copy(m, Page(s, 3), 0, out _).OrThrow("copy");
        s.T.Mremap(m, 2 * s.PS, 2 * s.PS, MremapFlags.MayMove | MremapFlags.Fixed, dst + s.PS).OrThrow("mremap");
        var raws = ReadRaw(u);
        Assert.Equal([UffdConstants.EventUnmap, UffdConstants.EventRemap, UffdConstants.EventUnmap], raws.Select(r => r[0]));
        var early = UffdMsg.Read(raws[0]);
        Assert.Equal((dst + s.PS, dst + 3 * s.PS), (early.RemoveStart, early.RemoveEnd));
        // arg.remap: from at 8, to at 16, len (u64) at 24.
        Assert.Equal(0x14, raws[1][0]);
        Assert.Equal(m, U64(raws[1], 8));
        Assert.Equal(dst + s.PS, U64(raws[1], 16));
        Assert.Equal(2 * s.PS, U64(raws[1], 24));
        var remap = UffdMsg.Read(raws[1]);
        Assert.Equal((m, dst + s.PS, 2 * s.PS), (remap.RemapFrom, remap.RemapTo, remap.RemapLen));
        var old = UffdMsg.Read(raws[2]);
        Assert.Equal((m, m + 2 * s.PS), (old.RemoveStart, old.RemoveEnd));
        // The moved page came along; the moved VMA is still registered: its missing page faults to us.
        Assert.Equal(3, s.R(dst + s.PS));
        Assert.Equal(Errno.EAGAIN, s.T.Read(dst + 2 * s.PS, new byte[1]).Error);
        var fault = UffdMsg.Read(Assert.Single(ReadRaw(u)));
        Assert.Equal(UffdConstants.EventPagefault, fault.Event);
        Assert.Equal(dst + 2 * s.PS, fault.Address);
    }

    [Fact]
    public void MremapMove_WithoutRemap_DropsTheRegistrationOfTheMovedVma()
    {
        // mremap_userfaultfd_prep: no EVENT_REMAP, so the new VMA loses its context and flags.
        var (s, u, m) = Registered(4, UffdConstants.FeatureEventUnmap);
        ulong to = (ulong)s.T.Mremap(m, 4 * s.PS, 4 * s.PS, MremapFlags.MayMove | MremapFlags.Fixed, m + 64 * s.PS).OrThrow("mremap");
        var old = UffdMsg.Read(Assert.Single(ReadRaw(u)));
        Assert.Equal(UffdConstants.EventUnmap, old.Event);
        Assert.Equal(0, s.R(to + s.PS)); // an ordinary fault: no message, no sleep
        Assert.Empty(ReadRaw(u));
        Assert.DoesNotContain(" um", s.K.Proc.Smaps(s.T.Pid));
        Assert.Equal(Errno.ENOENT, u.Copy(to + 2 * s.PS, Page(s, 1), 0, out _).Error);
    }

    [Fact]
    public void AnUnreadEvent_MakesCopyAndZeropageEagain_UntilTheMonitorReadsIt()
    {
        var (s, u, m) = Registered(4, Events);
        s.T.Munmap(m + 3 * s.PS, s.PS).OrThrow("munmap"); // no monitor: the event stays queued
        Assert.Single(u.PendingEvents);
        Assert.Equal(Errno.EAGAIN, u.Copy(m, Page(s, 1), 0, out long copy).Error);
        Assert.Equal(-(long)Errno.EAGAIN, copy);
        Assert.Equal(Errno.EAGAIN, u.ZeroPage(m, s.PS, 0, out long zp).Error);
        Assert.Equal(-(long)Errno.EAGAIN, zp);
        Assert.Equal(UffdConstants.EventUnmap, UffdMsg.Read(Assert.Single(ReadRaw(u))).Event);
        u.Copy(m, Page(s, 1), 0, out copy).OrThrow("copy after the read");
        Assert.Equal((long)s.PS, copy);
    }

    [Fact]
    public void AClosedContext_TakesNoEvents()
    {
        var (s, u, m) = Registered(2, Events);
        u.Close();
        s.T.Munmap(m, 2 * s.PS).OrThrow("munmap");
        Assert.Empty(u.PendingEvents);
    }
}
