using System.Diagnostics;
using System.Globalization;

namespace CriuSharp.Cli;

/// <summary>
/// CRIU's log conventions (criu/log.c): levels 0 msg, 1 error, 2 warning (the default), 3 info,
/// 4 debug, chosen with -v0..-v4 (or -v, -vv: one level up each); each line starts with the time
/// since the command began as "(SS.uuuuuu)" and, with --log-pid, the process id. With
/// -o/--log-file FILE (relative to -D, as CRIU's) the lines go to that file; without it, lines
/// above the warning level go to stderr (errors and warnings are printed there anyway).
/// </summary>
public sealed class CliLog : IDisposable
{
    public const int Msg = 0, Error = 1, Warn = 2, Info = 3, Debug = 4;
    public const int DefaultLevel = Warn;

    private static readonly AsyncLocal<CliLog?> CurrentLog = new();
    private readonly Stopwatch _clock = Stopwatch.StartNew();
    private readonly TextWriter? _file;
    private readonly TextWriter _stderr;
    private readonly int _level;
    private readonly bool _pid;

    private CliLog(TextWriter? file, TextWriter stderr, int level, bool pid)
    {
        _file = file;
        _stderr = stderr;
        _level = level;
        _pid = pid;
    }

    /// <summary>The log of the command running on this flow (a no-op log outside a command).</summary>
    public static CliLog Current => CurrentLog.Value ?? Null;

    private static readonly CliLog Null = new(null, TextWriter.Null, -1, false);

    public static CliLog Start(string? logFile, string baseDir, TextWriter stderr, int level, bool pid)
    {
        TextWriter? file = null;
        if (logFile is not null)
        {
            string path = Path.IsPathRooted(logFile) ? logFile : Path.Combine(baseDir, logFile);
            Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!);
            file = new StreamWriter(path, append: false) { AutoFlush = true };
        }
        var log = new CliLog(file, stderr, Math.Clamp(level, 0, Debug), pid);
        CurrentLog.Value = log;
        return log;
    }

    public void Write(int level, string message)
    {
        if (level > _level)
            return;
        var t = _clock.Elapsed;
        string prefix = string.Create(CultureInfo.InvariantCulture, $"({(long)t.TotalSeconds:00}.{t.Ticks % TimeSpan.TicksPerSecond / 10:000000}) ");
        if (_pid)
            prefix += string.Create(CultureInfo.InvariantCulture, $"{Environment.ProcessId,6}: ");
        string tag = level switch { Error => "Error: ", Warn => "Warn: ", _ => "" };
        if (_file is not null)
            _file.WriteLine(prefix + tag + message);
        else if (level > Warn)
            _stderr.WriteLine(prefix + tag + message);
    }

    public void Dispose()
    {
        _file?.Dispose();
        if (ReferenceEquals(CurrentLog.Value, this))
            CurrentLog.Value = null;
    }

    /// <summary>-v, -vv, -v0 … -v4 as CRIU spells them, rewritten to --verbosity N for the parser.</summary>
    public static string[] RewriteVerbosity(string[] args)
    {
        var o = new List<string>(args.Length);
        foreach (var a in args)
        {
            if (a.Length == 3 && a.StartsWith("-v", StringComparison.Ordinal) && a[2] is >= '0' and <= '9')
                o.AddRange(["--verbosity", a[2..]]);
            else if (a.Length >= 2 && a[0] == '-' && a[1..].All(c => c == 'v'))
                o.AddRange(["--verbosity", Math.Min(Debug, DefaultLevel + a.Length - 1).ToString(CultureInfo.InvariantCulture)]);
            else
                o.Add(a);
        }
        return [.. o];
    }
}
