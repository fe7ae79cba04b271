using CriuSharp.Cli;

// pycriu closes descriptors 0-2 before it execs `swrk`, and the runtime reuses those numbers for
// its own pipes before Main runs: swrk must never write to "standard output" or "error".
if (args is ["swrk", ..])
{
    Console.SetOut(TextWriter.Null);
    Console.SetError(TextWriter.Null);
}
bool crashTest = CrashHook.Install();
int code = CliApp.Run(args);
if (crashTest)
    Console.Error.WriteLine($"criu-sharp: crash points passed: {CrashHook.Hits}");
return code;
