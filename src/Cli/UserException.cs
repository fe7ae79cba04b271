namespace CriuSharp.Cli;

/// <summary>
/// An error the user can fix. The command boundary prints <see cref="Exception.Message"/> as one line
/// (plus the optional hint) and exits with <see cref="Code"/>; no stack unless --verbose.
/// </summary>
public sealed class UserException(ExitCode code, string message, string? hint = null, Exception? inner = null)
    : Exception(message, inner)
{
    public ExitCode Code { get; } = code;
    public string? Hint { get; } = hint;
}
