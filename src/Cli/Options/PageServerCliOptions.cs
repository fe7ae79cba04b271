using System.CommandLine;
using CriuSharp.Dumper.PageServer;
using CriuSharp.ImageFormat;

namespace CriuSharp.Cli;

/// <summary>
/// The connection options CRIU gives the page server and its clients: <c>--address</c>,
/// <c>--port</c>, the TLS options, and <c>--ps-layout</c> (ours: which header layout to speak,
/// since CRIU's protocol does not negotiate it).
/// </summary>
public sealed class PageServerCliOptions
{
    public Option<string?> Address { get; } = new("--address") { Description = "Page server address (the page-server verb listens on every address by default)." };
    public Option<int> Port { get; } = new("--port") { Description = "Page server TCP port (page-server: 0 picks a free one and prints it)." };
    public Option<string> Layout { get; } = new Option<string>("--ps-layout")
    {
        Description = "page_server_iov header layout: current (CRIU 4.2+, 32 bytes, 64-bit nr_pages) or pre-4.2 (24 bytes, as criu 3.17-4.1 speak). The protocol does not negotiate it: both sides must agree.",
        DefaultValueFactory = _ => "current",
    }.AcceptOnlyFromAmong("current", "pre-4.2");
    public Option<bool> Tls { get; } = new("--tls") { Description = "Use TLS (both sides present certificates signed by the CA)." };
    public Option<string> TlsCaCert { get; } = new("--tls-cacert") { Description = "CA certificate (PEM) that signs the peer's certificate.", DefaultValueFactory = _ => PageServerTls.DefaultCaCert };
    public Option<string> TlsCert { get; } = new("--tls-cert") { Description = "This side's certificate (PEM).", DefaultValueFactory = _ => PageServerTls.DefaultCert };
    public Option<string> TlsKey { get; } = new("--tls-key") { Description = "This side's private key (PEM).", DefaultValueFactory = _ => PageServerTls.DefaultKey };
    public Option<bool> TlsNoCnVerify { get; } = new("--tls-no-cn-verify") { Description = "Do not check the server certificate's name against --address." };
    public Option<bool> Compress { get; } = new("--ps-compress") { Description = "Send pages as compressed blocks (--compress codec, --block-size), a criu-sharp extension: only a criu-sharp page server understands it." };
    public Option<int> Timeout { get; } = new("--ps-timeout") { Description = "Seconds a page-server connection may stay silent before it is dropped.", DefaultValueFactory = _ => 60 };

    public void AddTo(Command c)
    {
        foreach (var o in new Option[] { Address, Port, Layout, Tls, TlsCaCert, TlsCert, TlsKey, TlsNoCnVerify, Timeout })
            c.Options.Add(o);
    }

    /// <summary>The TLS options only, for verbs with their own address and port (migrate, migrate-service).</summary>
    public void AddTlsTo(Command c)
    {
        foreach (var o in new Option[] { Tls, TlsCaCert, TlsCert, TlsKey, TlsNoCnVerify })
            c.Options.Add(o);
    }

    /// <summary>The client's extra option.</summary>
    public void AddClientTo(Command c)
    {
        AddTo(c);
        c.Options.Add(Compress);
    }

    public PageServerLayout ParsedLayout(ParseResult p) => PageServerIov.ParseLayout(p.GetValue(Layout)!);

    public PageServerTls? ParsedTls(ParseResult p) => p.GetValue(Tls)
        ? new PageServerTls { CaCert = p.GetValue(TlsCaCert)!, Cert = p.GetValue(TlsCert)!, Key = p.GetValue(TlsKey)!, NoCnVerify = p.GetValue(TlsNoCnVerify) }
        : null;

    public TimeSpan ParsedTimeout(ParseResult p)
    {
        int s = p.GetValue(Timeout);
        if (s < 1 || s > 86400)
            throw new UserException(ExitCode.Usage, $"--ps-timeout {s}: must be 1 to 86400 seconds");
        return TimeSpan.FromSeconds(s);
    }

    public int ParsedPort(ParseResult p, bool allowZero)
    {
        int port = p.GetValue(Port);
        if (port < (allowZero ? 0 : 1) || port > 65535)
            throw new UserException(ExitCode.Usage, $"--port {port}: must be {(allowZero ? 0 : 1)} to 65535");
        return port;
    }

    /// <summary>The client side (pre-dump/dump --page-server): where to send pages.</summary>
    public PageServerEndpoint Endpoint(ParseResult p)
    {
        string? address = p.GetValue(Address);
        if (string.IsNullOrEmpty(address))
            throw new UserException(ExitCode.Usage, "--page-server needs --address (and --port)");
        return new PageServerEndpoint
        {
            Address = address,
            Port = ParsedPort(p, allowZero: false),
            Layout = ParsedLayout(p),
            Tls = ParsedTls(p),
            IoTimeout = ParsedTimeout(p),
        };
    }
}
