using System.Net.Sockets;
using CriuSharp.ImageFormat.Rpc;
using Google.Protobuf;

namespace CriuSharp.Cli.Rpc;

/// <summary>
/// One client of the RPC service: an AF_UNIX SOCK_SEQPACKET socket carrying one protobuf message
/// per packet, with no length prefix (criu/cr-service.c, recv_criu_msg and send_criu_msg).
///
///   client ──criu_req──▶ service        one packet = one message; its size comes from
///   client ◀─criu_resp── service        recv(MSG_PEEK | MSG_TRUNC) before the real read
///
/// The size is read first so that a packet larger than <see cref="MaxRequestBytes"/> is consumed
/// with a one-byte read (the kernel drops the rest of a truncated SEQPACKET record) instead of
/// being buffered whole.
/// </summary>
internal sealed class RpcConnection : IDisposable
{
    /// <summary>
    /// The largest request the service reads. A criu_req with every string option CRIU defines
    /// filled is a few KiB; 64 KiB is well above that and below the 208 KiB a SEQPACKET record may
    /// reach with the default socket buffer (net.core.wmem_default), so the limit can be met.
    /// </summary>
    public const int MaxRequestBytes = 64 << 10;

    private const int SolSocket = 1;     // SOL_SOCKET
    private const int SoPeerCred = 17;   // SO_PEERCRED: struct ucred { pid_t pid; uid_t uid; gid_t gid; }

    private readonly Socket _socket;

    public RpcConnection(Socket socket)
    {
        _socket = socket;
        (PeerPid, PeerUid) = ReadPeerCredentials(socket);
    }

    /// <summary>A socket inherited from the parent as descriptor <paramref name="fd"/> (swrk).</summary>
    public static RpcConnection FromDescriptor(int fd) =>
        new(new Socket(new SafeSocketHandle((IntPtr)fd, ownsHandle: true)));

    /// <summary>The client's pid from SO_PEERCRED: the process that connected, or that made the socketpair.</summary>
    public int PeerPid { get; }
    public int PeerUid { get; }

    private static (int Pid, int Uid) ReadPeerCredentials(Socket s)
    {
        Span<byte> ucred = stackalloc byte[12];
        try
        {
            int n = s.GetRawSocketOption(SolSocket, SoPeerCred, ucred);
            if (n >= 8)
                return (BitConverter.ToInt32(ucred), BitConverter.ToInt32(ucred[4..]));
        }
        catch (SocketException)
        {
        }
        return (0, -1);
    }

    /// <summary>What one receive produced.</summary>
    public enum ReceiveStatus { Message, Closed, TooLarge, Malformed }

    public readonly record struct Received(ReceiveStatus Status, criu_req? Request, int Bytes, string? Problem);

    /// <summary>Reads one packet and parses it as a criu_req.</summary>
    public Received Receive()
    {
        int size;
        Span<byte> probe = stackalloc byte[1];
        try
        {
            // With MSG_TRUNC the kernel returns the record's full length even though one byte is copied.
            size = _socket.Receive(probe, SocketFlags.Peek | SocketFlags.Truncated);
        }
        catch (SocketException)
        {
            return new(ReceiveStatus.Closed, null, 0, null);
        }
        catch (ObjectDisposedException)
        {
            return new(ReceiveStatus.Closed, null, 0, null);
        }
        // A zero-length record cannot be told from end of file; CRIU takes both as the client leaving.
        if (size <= 0)
            return new(ReceiveStatus.Closed, null, 0, null);
        if (size > MaxRequestBytes)
        {
            try
            {
                _socket.Receive(probe, SocketFlags.None);
            }
            catch (SocketException)
            {
                return new(ReceiveStatus.Closed, null, size, null);
            }
            return new(ReceiveStatus.TooLarge, null, size, $"request of {size} bytes exceeds the maximum of {MaxRequestBytes} bytes");
        }
        var buffer = new byte[size];
        int got;
        try
        {
            got = _socket.Receive(buffer, SocketFlags.None);
        }
        catch (SocketException)
        {
            return new(ReceiveStatus.Closed, null, size, null);
        }
        if (got <= 0)
            return new(ReceiveStatus.Closed, null, 0, null);
        try
        {
            var req = criu_req.Parser.ParseFrom(buffer.AsSpan(0, got));
            if (!req.HasType)
                return new(ReceiveStatus.Malformed, null, got, "malformed request: criu_req.type (field 1) is missing");
            return new(ReceiveStatus.Message, req, got, null);
        }
        catch (InvalidProtocolBufferException e)
        {
            return new(ReceiveStatus.Malformed, null, got, $"malformed request: {CliApp.FirstLine(e.Message)}");
        }
    }

    /// <summary>Sends one response; false when the client has gone (the caller stops serving it).</summary>
    public bool Send(criu_resp resp)
    {
        try
        {
            _socket.Send(resp.ToByteArray(), SocketFlags.None);
            return true;
        }
        catch (SocketException)
        {
            return false;
        }
        catch (ObjectDisposedException)
        {
            return false;
        }
    }

    /// <summary>
    /// Waits up to <paramref name="wait"/> and tells whether the client has hung up. A request
    /// already waiting to be read does not count (it is read later), so the full wait is spent.
    /// </summary>
    public bool HasHungUp(TimeSpan wait)
    {
        try
        {
            if (!_socket.Poll(wait, SelectMode.SelectRead))
                return false;
            Span<byte> probe = stackalloc byte[1];
            if (_socket.Receive(probe, SocketFlags.Peek) == 0)
                return true;
            Thread.Sleep(wait);
            return false;
        }
        catch (SocketException)
        {
            return true;
        }
        catch (ObjectDisposedException)
        {
            return true;
        }
    }

    /// <summary>Ends both directions: a session blocked reading sees end of file and stops.</summary>
    public void Shutdown()
    {
        try
        {
            _socket.Shutdown(SocketShutdown.Both);
        }
        catch (SocketException)
        {
        }
        catch (ObjectDisposedException)
        {
        }
    }

    public void Dispose() => _socket.Dispose();
}
