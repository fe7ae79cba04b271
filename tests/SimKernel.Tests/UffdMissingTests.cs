using CriuSharp.KernelApi;
using CriuSharp.SimKernel.Mm;
using CriuSharp.SimKernel.Uffd;
using Xunit;

namespace CriuSharp.SimKernel.Tests;

/// <summary>
/// userfaultfd missing mode against the rules of fs/userfaultfd.c (userfaultfd_api, _register,
/// _read, _copy, _zeropage, _wake, _release, handle_userfault, userfault_msg) and mm/userfaultfd.c
/// (find_dst_vma, mfill_atomic, mfill_atomic_install_pte, mfill_atomic_pte_zeropage).
/// </summary>
public class UffdMissingTests
{
    private static (Sim S, Userfaultfd U, ulong M) Registered(ulong pages, ulong features = 0, bool shared = false, ulong mode = UffdConstants.RegisterModeMissing)
    {
        var s = new Sim();
        ulong m = shared ? s.SharedAnon(pages) : s.Anon(pages);
        s.T.OpenUserfaultfd(out var u).OrThrow("userfaultfd");
        u!.ApiHandshake(UffdConstants.Api, features, out _).OrThrow("UFFDIO_API");
        u.Register(m, pages * s.PS, mode).OrThrow("UFFDIO_REGISTER");
        return (s, u, m);
    }

    private static byte[] Page(Sim s, byte fill)
    {
        var b = new byte[s.PS];
        Array.Fill(b, fill);
        return b;
    }

    private static List<UffdMsg> ReadAll(Userfaultfd u)
    {
        var buf = new byte[UffdMsg.Size * 8];
        var r = u.Read(buf);
        var list = new List<UffdMsg>();
        for (int i = 0; r.Ok && i < r.Value; i += UffdMsg.Size)
            list.Add(UffdMsg.Read(buf.AsSpan(i)));
        return list;
    }

    [Fact]
    public void Api_SecondCallOrUnknownFeature_IsEinvalAndZeroesTheAnswer()
    {
        var s = new Sim();
        s.T.OpenUserfaultfd(out var u).OrThrow("userfaultfd");
        Assert.Equal(Errno.EINVAL, u!.ApiHandshake(UffdConstants.Api, 1UL << 40, out ulong bad).Error);
        Assert.Equal(0UL, bad);
        u.ApiHandshake(UffdConstants.Api, UffdConstants.FeatureMissingShmem, out ulong ok).OrThrow("api");
        Assert.NotEqual(0UL, ok & UffdConstants.FeatureSigbus);
        Assert.Equal(Errno.EINVAL, u.ApiHandshake(UffdConstants.Api, 0, out ulong again).Error);
        Assert.Equal(0UL, again);
    }

    [Fact]
    public void Ioctls_BeforeApi_AreEinval()
    {
        var s = new Sim();
        ulong m = s.Anon(1);
        s.T.OpenUserfaultfd(out var u).OrThrow("userfaultfd");
        Assert.Equal(Errno.EINVAL, u!.Read(new byte[UffdMsg.Size]).Error);
        Assert.Equal(Errno.EINVAL, u.Copy(m, Page(s, 1), 0, out _).Error);
        Assert.Equal(Errno.EINVAL, u.Wake(m, s.PS).Error);
        Assert.Equal(Errno.EINVAL, u.Register(m, s.PS, UffdConstants.RegisterModeMissing).Error);
    }

    [Fact]
    public void Register_MissingOnRegularFile_IsEinval()
    {
        var s = new Sim();
        var f = s.K.Fs.Create("/data", new byte[s.PS]);
        ulong m = (ulong)s.T.Mmap(0, s.PS, Prot.Read | Prot.Write, MapFlags.Private, f).OrThrow("mmap");
        s.T.OpenUserfaultfd(out var u).OrThrow("userfaultfd");
        u!.ApiHandshake(UffdConstants.Api, 0, out _).OrThrow("api");
        Assert.Equal(Errno.EINVAL, u.Register(m, s.PS, UffdConstants.RegisterModeMissing).Error);
    }

    [Fact]
    public void ReadFault_WithoutMonitor_SleepsWithOnePageAlignedMessage_UntilCopyWakesIt()
    {
        var (s, u, m) = Registered(2);
        var b = new byte[1];
        Assert.Equal(Errno.EAGAIN, s.T.Read(m + s.PS + 0x123, b).Error);
        Assert.True(s.T.Alive);
        Assert.NotNull(s.T.UserfaultWait);
        Assert.Throws<InvalidOperationException>(() => s.T.Read(m, b));

        var msgs = ReadAll(u);
        var msg = Assert.Single(msgs);
        Assert.Equal(UffdConstants.EventPagefault, msg.Event);
        Assert.Equal(0UL, msg.Flags); // a read fault, missing (neither WP nor MINOR)
        Assert.Equal(m + s.PS, msg.Address);
        Assert.Equal(0u, msg.Ptid);
        // Read once: the thread now waits on fault_wqh, no longer pending.
        Assert.Equal(Errno.EAGAIN, u.Read(new byte[UffdMsg.Size]).Error);
        Assert.Equal(Errno.EINVAL, u.Read(new byte[UffdMsg.Size - 1]).Error);

        u.Copy(m + s.PS, Page(s, 0x5A), 0, out long copied).OrThrow("UFFDIO_COPY");
        Assert.Equal((long)s.PS, copied);
        Assert.Null(s.T.UserfaultWait);
        Assert.Equal(0x5A, s.R(m + s.PS + 0x123));
        ulong pm = s.PM(m + s.PS);
        Assert.NotEqual(0UL, pm & PagemapBits.Present);
        Assert.NotEqual(0UL, pm & PagemapBits.SoftDirty); // pte_mkdirty sets soft-dirty
    }

    [Fact]
    public void Message_ReportsWriteExactAddressAndThreadId_WhenAskedFor()
    {
        var (s, u, m) = Registered(1, UffdConstants.FeatureExactAddress | UffdConstants.FeatureThreadId);
        Assert.Equal(Errno.EAGAIN, s.T.Write(m + 0x40, [7]).Error);
        var msg = Assert.Single(ReadAll(u));
        Assert.Equal(UffdConstants.PagefaultFlagWrite, msg.Flags);
        Assert.Equal(m + 0x40, msg.Address);
        Assert.Equal((uint)s.T.Pid, msg.Ptid);
        var raw = new byte[UffdMsg.Size];
        msg.WriteTo(raw);
        Assert.Equal(0x12, raw[0]);
        Assert.All(raw[1..8], x => Assert.Equal(0, x));
    }

    [Fact]
    public void Monitor_RunsWhileTheThreadSleeps_AndTheAccessCompletesInOneCall()
    {
        var (s, u, m) = Registered(4);
        var seen = new List<UffdMsg>();
        u.SetMonitor(fd =>
        {
            var buf = new byte[UffdMsg.Size];
            while (fd.Read(buf) is { Ok: true })
            {
                var msg = UffdMsg.Read(buf);
                seen.Add(msg);
                fd.Copy(msg.Address, Page(s, (byte)(msg.Address >> 12)), 0, out _).OrThrow("copy");
            }
        });
        s.W(m + 2 * s.PS + 5, 0xEE);
        Assert.Equal(0xEE, s.R(m + 2 * s.PS + 5));
        Assert.Equal((byte)((m + 2 * s.PS) >> 12), s.R(m + 2 * s.PS + 6));
        Assert.Equal(m + 2 * s.PS, Assert.Single(seen).Address);
        Assert.Equal(1, u.MissingFaults);
        // A page already filled faults no more.
        s.W(m + 2 * s.PS + 7, 1);
        Assert.Single(seen);
    }

    [Fact]
    public void Copy_OntoAPresentPage_IsEexist_AndAPartialCopyIsEagainWithTheBytesDone()
    {
        var (s, u, m) = Registered(3);
        u.Copy(m + s.PS, Page(s, 1), 0, out _).OrThrow("copy");
        Assert.Equal(Errno.EEXIST, u.Copy(m + s.PS, Page(s, 2), 0, out long c1).Error);
        Assert.Equal(-(long)Errno.EEXIST, c1);
        var two = new byte[2 * s.PS];
        Assert.Equal(Errno.EAGAIN, u.Copy(m, two, 0, out long c2).Error);
        Assert.Equal((long)s.PS, c2);
        Assert.Equal(1, s.R(m + s.PS)); // the present page was left alone
    }

    [Fact]
    public void Copy_DontWake_LeavesTheThreadAsleepUntilWake()
    {
        var (s, u, m) = Registered(2);
        Assert.Equal(Errno.EAGAIN, s.T.Write(m, [1]).Error);
        u.Copy(m, Page(s, 9), UffdConstants.CopyModeDontWake, out _).OrThrow("copy");
        Assert.NotNull(s.T.UserfaultWait);
        u.Wake(m + s.PS, s.PS).OrThrow("wake"); // another page: not this thread
        Assert.NotNull(s.T.UserfaultWait);
        u.Wake(m, 2 * s.PS).OrThrow("wake");
        Assert.Null(s.T.UserfaultWait);
        s.W(m, 3);
        Assert.Equal(9, s.R(m + 1));
    }

    [Fact]
    public void Copy_BadArguments_FollowValidateRangeAndFindDstVma()
    {
        var (s, u, m) = Registered(2);
        ulong other = s.Anon(1);
        Assert.Equal(Errno.EINVAL, u.Copy(m + 1, Page(s, 1), 0, out long c).Error);
        Assert.Equal(0L, c); // rejected before the kernel writes the copy field
        Assert.Equal(Errno.EINVAL, u.Copy(m, new byte[100], 0, out _).Error);
        Assert.Equal(Errno.EINVAL, u.Copy(m, [], 0, out _).Error);
        Assert.Equal(Errno.EINVAL, u.Copy(m, Page(s, 1), 4, out _).Error);
        Assert.Equal(Errno.EINVAL, u.Copy(0x1000, Page(s, 1), 0, out _).Error); // below mmap_min_addr
        // find_dst_vma: not registered, or crossing the VMA's end, is ENOENT in the copy field too.
        Assert.Equal(Errno.ENOENT, u.Copy(other, Page(s, 1), 0, out long c2).Error);
        Assert.Equal(-(long)Errno.ENOENT, c2);
        Assert.Equal(Errno.ENOENT, u.Copy(m + s.PS, new byte[2 * s.PS], 0, out _).Error);
        // MODE_WP on a range registered without WP.
        Assert.Equal(Errno.EINVAL, u.Copy(m, Page(s, 1), UffdConstants.CopyModeWp, out long c3).Error);
        Assert.Equal(-(long)Errno.EINVAL, c3);
    }

    [Fact]
    public void ZeroPage_MapsTheZeroPage_AndIsEexistOnAPresentPage()
    {
        var (s, u, m) = Registered(2);
        Assert.Equal(Errno.EAGAIN, s.T.Read(m, new byte[8]).Error);
        long rss = s.T.RssPages;
        u.ZeroPage(m, s.PS, 0, out long z).OrThrow("zeropage");
        Assert.Equal((long)s.PS, z);
        Assert.Null(s.T.UserfaultWait);
        Assert.Equal(0, s.R(m + 17));
        Assert.Equal(rss, s.T.RssPages); // the zero page is nobody's resident memory
        Assert.Equal(Errno.EEXIST, u.ZeroPage(m, s.PS, 0, out long z2).Error);
        Assert.Equal(-(long)Errno.EEXIST, z2);
        Assert.Equal(Errno.EINVAL, u.ZeroPage(m, s.PS, UffdConstants.CopyModeWp, out _).Error);
        // A write to the zero page is an ordinary copy-on-write fault, no message.
        s.W(m + 1, 4);
        Assert.Empty(ReadAll(u));
    }

    [Fact]
    public void FeatureSigbus_KillsWithSigbusInsteadOfAMessage()
    {
        var (s, u, m) = Registered(1, UffdConstants.FeatureSigbus);
        Assert.False(s.T.Write(m, [1]).Ok);
        Assert.False(s.T.Alive);
        Assert.Equal(SimTask.SIGBUS, s.T.TermSignal);
        Assert.Empty(ReadAll(u));
    }

    [Fact]
    public void Unregister_WakesTheWaiter_AndTheRetriedFaultIsAnOrdinaryOne()
    {
        var (s, u, m) = Registered(2);
        Assert.Equal(Errno.EAGAIN, s.T.Read(m, new byte[1]).Error);
        u.Unregister(m, 2 * s.PS).OrThrow("unregister");
        Assert.Null(s.T.UserfaultWait);
        Assert.Equal(0, s.R(m));
        Assert.DoesNotContain(" um", s.K.Proc.Smaps(s.T.Pid));
    }

    [Fact]
    public void Close_UnregistersEverythingAndWakesEveryone()
    {
        var (s, u, m) = Registered(2);
        Assert.Equal(Errno.EAGAIN, s.T.Write(m, [1]).Error);
        Assert.Contains(" um", s.K.Proc.Smaps(s.T.Pid));
        u.Close();
        Assert.True(u.Released);
        Assert.Null(s.T.UserfaultWait);
        s.W(m, 2); // anonymous memory reads and writes as if never registered
        Assert.Equal(2, s.R(m));
        Assert.DoesNotContain(" um", s.K.Proc.Smaps(s.T.Pid));
    }

    [Fact]
    public void Shmem_MissingMeansNotInThePageCache_AndCopyFillsTheCache()
    {
        var (s, u, m) = Registered(2, UffdConstants.FeatureMissingShmem, shared: true);
        Assert.Equal(Errno.EAGAIN, s.T.Read(m, new byte[1]).Error);
        u.Copy(m, Page(s, 0x33), 0, out _).OrThrow("copy");
        Assert.Equal(0x33, s.R(m));
        // The pte goes, the cache page stays: the next fault is no userfault, and COPY is EEXIST.
        s.Madv(m, 1, Madvise.DontNeed).OrThrow("madvise");
        Assert.Equal(0x33, s.R(m));
        Assert.Empty(ReadAll(u));
        Assert.Equal(Errno.EEXIST, u.Copy(m, Page(s, 1), 0, out _).Error);
    }

    [Fact]
    public void AThreadKilledWhileAsleep_TakesItsMessageWithIt()
    {
        var (s, u, m) = Registered(1);
        Assert.Equal(Errno.EAGAIN, s.T.Read(m, new byte[1]).Error);
        s.K.Exit(s.T, 0, SimTask.SIGKILL);
        Assert.Equal(Errno.EAGAIN, u.Read(new byte[UffdMsg.Size]).Error);
    }

    [Fact]
    public void ProcMemRead_OfAMissingPage_IsEagainWithoutAMonitor()
    {
        var (s, u, m) = Registered(1);
        var b = new byte[8];
        Assert.False(s.K.Proc.ReadMemory(s.T.Pid, m, b).Ok);
        Assert.Equal(UffdConstants.EventPagefault, Assert.Single(ReadAll(u)).Event);
        Assert.True(s.T.Alive);
    }
}
