using CriuSharp.Dumper.PageServer;
using CriuSharp.ImageFormat;

namespace CriuSharp.Dumper;

/// <summary>
/// The page-server side of a dump (<c>--page-server</c>): pagemaps and pages go over TCP, every
/// other image stays in the local images directory, as with CRIU.
/// </summary>
internal sealed partial class Checkpointer
{
    private PageServerClient? ConnectPageServer()
    {
        if (_o.PageServer is not { } ep)
            return null;
        if (_o.AutoDedup)
            throw new DumperException("--auto-dedup cannot be used with --page-server: the parent images are on the page server's host");
        // Delta pages need the server's word that it takes them (PS_IOV_FEATURES): asked only
        // when this dump may send some, so a CRIU page server never sees the question otherwise.
        return PageServerClient.Connect(ep with { Deltas = (_pre || SievesFinalDump) && _o.History is { Delta: true, FromChain: false } });
    }

    /// <summary>
    /// criu/page-xfer.c check_parent_server_xfer: which tasks' pagemaps the server's parent holds.
    /// Asked for every task before any page moves, so no question interleaves with the pages the
    /// transfer thread is sending. Null without a page server (the local parent answers).
    /// </summary>
    private static HashSet<int>? AskPageServerParents(PageServerClient? client, ImageSet? parentSet, IEnumerable<TaskState> tasks)
    {
        if (client is null)
            return null;
        var have = new HashSet<int>();
        if (parentSet is null)
            return have;
        foreach (var ts in tasks)
            if (client.HasParent(PageServerImageType.Pid, (ulong)ts.Task.Pid))
                have.Add(ts.Task.Pid);
        return have;
    }

    private IPageSink OpenSink(ImageDirectory dir, PageServerClient? client, int pid)
    {
        if (client is not null)
            return _o.LazyPages is null || _pre
                ? new PageServerSink(client, PageServerImageType.Pid, (ulong)pid)
                : throw new DumperException("--lazy-pages cannot be used with --page-server: the lazy pages stay on the source, which serves them itself");
        var local = new LocalPageSink(dir.BeginPagemap(pid, _o.PageStore));
        // A lazy dump's private anonymous pages stay on the source (the tree is frozen, so its
        // smaps is the one the collector walks).
        return _o.LazyPages is { } store && !_pre
            ? new LazyPageSink(local, pid, Proc.SmapsParser.Parse(_k.Smaps(pid)), store)
            : local;
    }

    private IPageSink OpenShmemSink(ImageDirectory dir, PageServerClient? client, ulong shmid) =>
        client is null
            ? new LocalPageSink(dir.BeginShmemPagemap(shmid, dir.NextPagesId(), _o.PageStore))
            : new PageServerSink(client, PageServerImageType.Shmem, shmid);
}
