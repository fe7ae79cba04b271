using CriuSharp.Cli;

bool crashTest = CrashHook.Install();
int code = CliApp.Run(args);
if (crashTest)
    Console.Error.WriteLine($"criu-sharp: crash points passed: {CrashHook.Hits}");
return code;
