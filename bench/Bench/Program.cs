using BenchmarkDotNet.Running;

if (args.Length > 0 && args[0] == "real-deltas")
    return CriuSharp.Bench.RealDeltas.Run(args[1..]);
if (args.Length > 0 && args[0] == "host-profile")
    return CriuSharp.Bench.HostProfile.Run(args[1..]);
BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args);
return 0;
