namespace CriuSharp.ImageFormat;

/// <summary>
/// The 32-bit magics of CRIU's v1.1 image layout (criu/include/magic.h), written host-endian (LE).
/// Protobuf images start with a head magic (COMMON, or SERVICE for stats) and the per-type magic;
/// inventory.img has only its type magic, and raw images such as pages-N.img have none at all.
/// </summary>
public static class Magic
{
    public const uint ImgCommon = 0x54564319;
    public const uint ImgService = 0x55105940;

    public const uint Inventory = 0x58313116;
    public const uint Pstree = 0x50273030;
    public const uint Core = 0x55053847;
    public const uint Ids = 0x54432030;
    public const uint Mm = 0x57492820;
    public const uint Pagemap = 0x56084025;
    public const uint Files = 0x56303138;
    public const uint RegFiles = 0x50363636;
    public const uint Fdinfo = 0x56213732;
    public const uint Creds = 0x54023547;
    public const uint Stats = 0x57093306;
    public const uint RemapFpath = 0x59133954;
    public const uint GhostFile = 0x52583605;

    /// <summary>
    /// criu-sharp's own sidecar images (simulator state that CRIU has no message for). Chosen not
    /// to collide with any value in pycriu's magic table; it reads "SIMs" in a hex dump.
    /// </summary>
    public const uint SimState = 0x734D4953;

    /// <summary>The ext-&lt;image&gt; sidecars holding our fields of a CRIU image; reads "SIMx".</summary>
    public const uint ExtFields = 0x784D4953;

    /// <summary>Page digests of the content tracker (reads "DIGs" in a hex dump), same rules as <see cref="SimState"/>.</summary>
    public const uint PageDigests = 0x73474944;

    /// <summary>img_version of the v1.1 layout (CRTOOLS_IMAGES_V1_1), the only one we write.</summary>
    public const uint ImagesV1_1 = 2;
}
