using System.Collections.Concurrent;
using System.CommandLine;
using System.Net.Sockets;
using System.Runtime.InteropServices;

namespace CriuSharp.Cli.Rpc;

/// <summary>
/// <c>criu-sharp swrk FD</c> and <c>criu-sharp service --address PATH</c>: CRIU's RPC front ends
/// (images/rpc.proto over AF_UNIX SOCK_SEQPACKET), the way pycriu, libcriu and go-criu drive CRIU.
/// </summary>
public static class RpcCommands
{
    /// <summary>Connections served at once by <c>service</c>; a client beyond them is told EBUSY.</summary>
    public const int MaxClients = 64;

    /// <summary>The version VERSION requests report: the CRIU release whose images and RPC fields
    /// this implementation follows (pagemap field 5 and criu_opts 66-71 come from 4.2).</summary>
    public const int CriuMajor = 4, CriuMinor = 2;

    public static Command Swrk()
    {
        var fd = new Argument<int>("fd") { Description = "Descriptor of the client's AF_UNIX SOCK_SEQPACKET socket, inherited across exec." };
        var machine = new MachineOptions();
        var cmd = new Command("swrk",
            "Serve CRIU RPC requests on an inherited socket, as 'criu swrk FD' (how pycriu, libcriu and go-criu start CRIU). " +
            "The machine is $CRIU_SHARP_MACHINE or --machine; nothing is written to stdout or stderr.");
        cmd.Arguments.Add(fd);
        machine.AddTo(cmd);
        cmd.SetAction(p =>
        {
            int n = p.GetValue(fd);
            if (n < 0)
                throw new UserException(ExitCode.Usage, $"swrk {n}: not a descriptor");
            RpcConnection c;
            try
            {
                c = RpcConnection.FromDescriptor(n);
            }
            catch (SocketException e)
            {
                throw new UserException(ExitCode.BadInput, $"descriptor {n} is not a usable socket: {e.Message}");
            }
            using (c)
            {
                var settings = new RpcSettings(machine.Directory(p), TimeSpan.FromSeconds(p.GetValue(machine.Wait)));
                var session = new RpcSession(c, settings);
                session.Run();
                // A page server started here outlives the conversation, as CRIU's forked one does.
                settings.PageServers.WaitAll();
                settings.PageServers.Dispose();
                return (int)session.ExitStatus;
            }
        });
        return cmd;
    }

    public static Command Service()
    {
        var address = new Option<string>("--address")
        {
            Description = "Path of the listening socket (CRIU's default: criu_service.socket in the current directory).",
            DefaultValueFactory = _ => "criu_service.socket",
        };
        var machine = new MachineOptions();
        var cmd = new Command("service",
            "Listen for CRIU RPC clients on an AF_UNIX SOCK_SEQPACKET socket, as 'criu service', serving each connection on its own " +
            "thread until SIGTERM or SIGINT. Requests work on $CRIU_SHARP_MACHINE or --machine (a request may name another in criu_opts.sim_machine).");
        cmd.Options.Add(address);
        machine.AddTo(cmd);
        cmd.SetAction(p =>
        {
            var settings = new RpcSettings(machine.Directory(p), TimeSpan.FromSeconds(p.GetValue(machine.Wait)));
            // A restore may create the machine later, but only next to something that exists.
            string? parent = Path.GetDirectoryName(settings.MachineDir);
            if (!SimKernel.Machine.SimMachine.Exists(settings.MachineDir) && !Directory.Exists(settings.MachineDir) && !Directory.Exists(parent))
                throw new UserException(ExitCode.BadInput, $"no machine in {settings.MachineDir}, and {parent} does not exist to create one in",
                    "Create it with 'criu-sharp spawn FILE --machine DIR', or choose an existing directory.");
            return Listen(Path.GetFullPath(p.GetValue(address)!), settings, p.InvocationConfiguration.Output, p.InvocationConfiguration.Error);
        });
        return cmd;
    }

    private static int Listen(string path, RpcSettings settings, TextWriter output, TextWriter error)
    {
        if (Directory.Exists(path))
            throw new UserException(ExitCode.BadInput, $"{path} is a directory, not a socket");
        // CRIU unlinks whatever is at the address; a file with contents is more likely a mistake.
        if (File.Exists(path) && new FileInfo(path).Length > 0)
            throw new UserException(ExitCode.BadInput, $"{path} is a file, not a socket; choose another --address");
        File.Delete(path);
        using var listener = new Socket(AddressFamily.Unix, SocketType.Seqpacket, ProtocolType.Unspecified);
        listener.Bind(new UnixDomainSocketEndPoint(path));
        try
        {
            // As CRIU: anyone may connect; the service acts with its own rights.
            if (!OperatingSystem.IsWindows())
                File.SetUnixFileMode(path, (UnixFileMode)0b110_110_110);
            listener.Listen(128);
            output.WriteLine($"criu-sharp service: listening on {path} (machine {settings.MachineDir})");
            output.Flush();
            using var stop = new CancellationTokenSource();
            using var term = PosixSignalRegistration.Create(PosixSignal.SIGTERM, c => { c.Cancel = true; stop.Cancel(); });
            using var intr = PosixSignalRegistration.Create(PosixSignal.SIGINT, c => { c.Cancel = true; stop.Cancel(); });
            var clients = new ConcurrentDictionary<RpcConnection, Thread>();
            var gate = new object();
            void Diag(string line)
            {
                lock (gate)
                {
                    try
                    {
                        error.WriteLine($"criu-sharp: service: {line}");
                    }
                    catch (IOException)
                    {
                    }
                }
            }
            while (!stop.IsCancellationRequested)
            {
                Socket s;
                try
                {
                    s = listener.AcceptAsync(stop.Token).AsTask().GetAwaiter().GetResult();
                }
                catch (OperationCanceledException)
                {
                    break;
                }
                catch (SocketException e)
                {
                    Diag($"accept failed: {e.Message}");
                    continue;
                }
                RpcConnection c;
                try
                {
                    c = new RpcConnection(s);
                }
                catch (Exception e) when (e is SocketException or ObjectDisposedException)
                {
                    s.Dispose();
                    continue;
                }
                if (clients.Count >= MaxClients)
                {
                    c.Send(new ImageFormat.Rpc.criu_resp
                    {
                        Type = ImageFormat.Rpc.criu_req_type.Empty, Success = false, CrErrno = RpcErrno.EBUSY,
                        CrErrmsg = $"the service is serving {MaxClients} clients already; try again",
                    });
                    c.Dispose();
                    continue;
                }
                var t = new Thread(() =>
                {
                    try
                    {
                        new RpcSession(c, settings, Diag).Run();
                    }
                    catch (Exception e)
                    {
                        Diag($"pid {c.PeerPid}: internal error: {e.GetType().Name}: {CliApp.FirstLine(e.Message)}");
                    }
                    finally
                    {
                        clients.TryRemove(c, out _);
                        c.Dispose();
                    }
                })
                {
                    IsBackground = true,
                    Name = $"rpc client {c.PeerPid}",
                };
                clients[c] = t;
                t.Start();
            }
            // Each session ends its current request, then reads end of file and stops; page servers
            // still waiting for their dump are closed.
            foreach (var (c, t) in clients.ToArray())
            {
                c.Shutdown();
                t.Join();
            }
            settings.PageServers.Cancel();
            settings.PageServers.WaitAll();
            settings.PageServers.Dispose();
            return 0;
        }
        finally
        {
            File.Delete(path);
        }
    }
}
