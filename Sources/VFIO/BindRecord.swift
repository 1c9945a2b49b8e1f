/// What a bind did, member by member: enough to give every member back to the
/// driver it had (`VFIOBinder.restore`), even from another run of the daemon
/// (it is `Codable`).
public struct BindRecord: Sendable, Hashable, Codable {
    /// One endpoint of the IOMMU group.
    public struct Member: Sendable, Hashable, Codable {
        /// `dddd:bb:dd.f`.
        public var address: String
        /// The driver it had before the bind; nil when it had none.
        public var originalDriver: String?
        /// Its `driver_override` before the bind; nil when none was set (`(null)`).
        public var originalOverride: String?
        /// True when it was on vfio-pci already: the bind left it alone, and so does `restore`.
        public var wasOnVFIO: Bool

        /// A member as it was before the bind.
        public init(address: String, originalDriver: String?, originalOverride: String? = nil, wasOnVFIO: Bool = false) {
            self.address = address
            self.originalDriver = originalDriver
            self.originalOverride = originalOverride
            self.wasOnVFIO = wasOnVFIO
        }
    }

    /// The address that was asked for.
    public var device: String
    /// The IOMMU group number.
    public var group: Int
    /// The group's endpoints (bridges excluded), in the order they were moved.
    public var members: [Member]
    /// The group's node (`/dev/vfio/5`), as seen under the binder's /dev root.
    public var groupNode: String

    /// A record of a bind.
    public init(device: String, group: Int, members: [Member], groupNode: String) {
        self.device = device
        self.group = group
        self.members = members
        self.groupNode = groupNode
    }
}
