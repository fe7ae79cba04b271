namespace CriuSharp.Cli;

/// <summary>
/// What a command says while another command holds the machine's lock. Piped or under --json:
/// one line, once. On a terminal: the same line, rewritten in place each second with the time
/// waited so far (carriage return and erase-line, ECMA-48 EL), ended with a newline once the
/// lock is taken or the wait gives up.
/// </summary>
internal sealed class LockWaitIndicator(TextWriter err, string dir, bool live) : IDisposable
{
    private readonly object _gate = new();
    private System.Diagnostics.Stopwatch? _watch;
    private Timer? _timer;
    private TimeSpan _limit;
    private bool _done;

    /// <summary>Live updates only on a terminal: the error stream is the console's and neither stream is redirected.</summary>
    public static bool IsTerminal(TextWriter err, bool json) =>
        !json && ReferenceEquals(err, Console.Error) && !Console.IsErrorRedirected && !Console.IsOutputRedirected;

    /// <summary>Called by the lock's wait loop once, when it finds the lock held.</summary>
    public void Begin(TimeSpan limit)
    {
        lock (_gate)
        {
            _limit = limit;
            if (!live)
            {
                err.WriteLine($"criu-sharp: machine {dir} is in use by another command; waiting up to {limit.TotalSeconds:0.#} s for its lock (--wait)");
                return;
            }
            _watch = System.Diagnostics.Stopwatch.StartNew();
            Draw();
            _timer = new Timer(_ => Tick(), null, TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(1));
        }
    }

    private void Tick()
    {
        lock (_gate)
            if (!_done)
                Draw();
    }

    private void Draw()
    {
        err.Write($"\rcriu-sharp: machine {dir} is in use by another command; waiting for its lock: {_watch!.Elapsed.TotalSeconds:0} s of up to {_limit.TotalSeconds:0.#} s (--wait)\u001b[K");
        err.Flush();
    }

    public void Dispose()
    {
        _timer?.Dispose();
        lock (_gate)
        {
            if (_done)
                return;
            _done = true;
            if (_watch is not null)
            {
                Draw();
                err.WriteLine();
            }
        }
    }
}
