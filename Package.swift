// swift-tools-version:6.0
import PackageDescription

/// This folder (linker flags name files in it by absolute path).
let packageRoot = String(#filePath.dropLast("/Package.swift".count))

// The data path, one module per arrow (see README "Architecture"):
// udev event -> HostDevices (sysfs + libusb + libpci) -> DeviceModel values
// -> HotplugRules (pure matcher, with HotplugConfig) -> decision -> actions.
let package = Package(
    name: "vhotplug",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "vhotplug", targets: ["vhotplug"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
    ],
    targets: [
        // C libraries, through pkg-config.
        .systemLibrary(name: "CUdev", pkgConfig: "libudev", providers: [.apt(["libudev-dev"])]),
        .systemLibrary(name: "CUSB", pkgConfig: "libusb-1.0", providers: [.apt(["libusb-1.0-0-dev"])]),
        .systemLibrary(name: "CPCI", pkgConfig: "libpci", providers: [.apt(["libpci-dev"])]),
        // Tests only: umockdev testbeds (fake sysfs devices and uevents).
        .systemLibrary(name: "CUmockdev", pkgConfig: "umockdev-1.0", providers: [.apt(["libumockdev-dev"])]),

        // Linux interfaces Glibc does not export (epoll, timerfd, signalfd, inotify, sockaddr_un).
        .target(name: "CLinux"),
        // The event loop: one epoll thread, the serial executor of the daemon's actors.
        .target(name: "Reactor", dependencies: ["CLinux"]),

        // Pure: the configuration (model, JSON5 loading with positions, validation).
        // Pure: JSON (JSON5 subset) parsing with positions, JSON writing, text escaping for logs.
        .target(name: "JSONKit"),
        .target(name: "HotplugConfig", dependencies: ["JSONKit"], exclude: ["README.md"]),
        // Pure: plain device values, no I/O.
        .target(name: "DeviceModel", dependencies: ["JSONKit"]),
        // Pure: device value + configuration -> decision.
        .target(name: "HotplugRules", dependencies: ["HotplugConfig", "DeviceModel"]),
        // I/O: sysfs, libusb descriptors, usb.ids / libpci names, udev events.
        .target(name: "HostDevices", dependencies: [
            "DeviceModel", "JSONKit", "CUdev", "CUSB", "CPCI", "CLinux",
            .product(name: "Logging", package: "swift-log"),
        ]),
        // The VMs: QMP client and QEMU backend, crosvm backend, behind one protocol.
        .target(name: "VMM", dependencies: [
            "DeviceModel", "HotplugConfig", "JSONKit", "Reactor", "CLinux",
            .product(name: "Logging", package: "swift-log"),
        ]),
        // VFIO rebinding of PCI devices with rollback (one syscall seam for tests).
        .target(name: "VFIO", dependencies: ["DeviceModel", "HostDevices", "JSONKit", "Reactor", .product(name: "Logging", package: "swift-log")],
                exclude: ["README.md"]),
        // The control API: request decoding, replies and notifications, the socket server.
        .target(name: "ControlAPI", dependencies: [
            "DeviceModel", "HotplugConfig", "JSONKit", "Reactor", "CLinux",
            .product(name: "Logging", package: "swift-log"),
        ], exclude: ["README.md"]),
        // The engine: events -> devices -> decisions -> VM operations; state.
        .target(name: "HotplugDaemon", dependencies: [
            "CLinux", "ControlAPI", "DeviceModel", "HostDevices", "HotplugConfig", "HotplugRules", "JSONKit", "Reactor", "VFIO", "VMM",
            .product(name: "Logging", package: "swift-log"),
        ]),
        // The commands (inspect, check, ...): argument parsing and output only.
        .target(name: "VHotplugCommands", dependencies: [
            "ControlAPI", "HotplugConfig", "DeviceModel", "HotplugRules", "HostDevices", "HotplugDaemon", "Reactor", "JSONKit",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        // Release: the Swift runtime linked in (no shared Swift libraries to map), and
        // relative relocations packed (RELR, lld): the loader then dirties no pages
        // to relocate, and the binary stays position-independent (ASLR).
        .executableTarget(name: "vhotplug", dependencies: ["VHotplugCommands"],
                          linkerSettings: [.unsafeFlags(["-static-stdlib", "-Xclang-linker", "-fuse-ld=lld",
                                                         "-Xlinker", "-z", "-Xlinker", "pack-relative-relocs",
                                                         // The functions a daemon runs, together (tools/bench/README.md).
                                                         "-Xlinker", "--symbol-ordering-file=\(packageRoot)/tools/bench/hot-functions.txt",
                                                         "-Xlinker", "--no-warn-symbol-ordering"],
                                                        .when(configuration: .release))]),
        // Benchmarks (tools/bench/run.sh builds them in release mode).
        .executableTarget(name: "vhotplug-bench", dependencies: ["HotplugConfig", "HotplugRules", "DeviceModel"],
                          path: "tools/bench/VHotplugBench"),
        // The least CPU a program can spend on the benchmark's cycle with the required
        // components (libudev, libusb, QMP), linked as vhotplug is.
        .executableTarget(name: "vhotplug-cpu-floor", dependencies: ["CLinux", "CUdev", "CUSB", "JSONKit"], path: "tools/bench/CPUFloor",
                          linkerSettings: [.unsafeFlags(["-static-stdlib", "-Xclang-linker", "-fuse-ld=lld"], .when(configuration: .release))]),
        // Hot-plug latency, CPU, idle, memory and start-up of the daemon (umockdev + a real QEMU).
        .executableTarget(name: "vhotplug-hotplug-bench", dependencies: ["VHotplugTestSupport", "CLinux", "CUdev", "HostDevices"],
                          path: "tools/bench/HotplugBench"),

        .target(name: "VHotplugTestSupport", dependencies: ["CUmockdev", "CLinux", "Reactor", .product(name: "Logging", package: "swift-log")],
                path: "Tests/TestSupport"),
        .testTarget(name: "HotplugConfigTests", dependencies: ["HotplugConfig", "JSONKit", "CLinux"],
                    resources: [.copy("Fixtures")]),
        .testTarget(name: "HotplugDaemonTests", dependencies: ["VHotplugTestSupport", "HotplugDaemon", "HostDevices", "DeviceModel", "VFIO",
                                                              .product(name: "Logging", package: "swift-log")]),
        .testTarget(name: "ControlAPITests", dependencies: ["ControlAPI", "DeviceModel", "JSONKit", "Reactor", "HotplugConfig",
                                                           "VHotplugTestSupport", .product(name: "Logging", package: "swift-log")]),
        .testTarget(name: "ReactorTests", dependencies: ["Reactor", "VHotplugTestSupport"]),
        .testTarget(name: "VMMTests", dependencies: ["VMM", "Reactor", "DeviceModel", "HostDevices", "VHotplugTestSupport",
                                                     .product(name: "Logging", package: "swift-log")]),
        .testTarget(name: "VFIOTests", dependencies: ["VFIO", "HostDevices", "DeviceModel", "Reactor", "VHotplugTestSupport"]),
        .testTarget(name: "HotplugRulesTests", dependencies: ["HotplugRules", "HotplugConfig", "DeviceModel"]),
        .testTarget(name: "HostDevicesTests", dependencies: ["HostDevices", "DeviceModel", "JSONKit", "VHotplugTestSupport"],
                    resources: [.copy("Fixtures")]),
        .testTarget(name: "VHotplugCommandsTests", dependencies: ["VHotplugCommands", "DeviceModel", "VHotplugTestSupport"]),
    ],
    swiftLanguageModes: [.v6]
)

// Async functions that belong to no actor run on their caller's executor, so the
// daemon's code stays on the event loop's thread (Swift 6.2+ semantics).
for target in package.targets where target.type != .system {
    target.swiftSettings = (target.swiftSettings ?? []) + [.enableUpcomingFeature("NonisolatedNonsendingByDefault")]
}

// Release code one section per function, so that the linker can put the functions a
// daemon runs together (fewer pages touched: tools/bench/README.md, "Memory").
for target in package.targets where target.type != .system && target.type != .test {
    target.swiftSettings = (target.swiftSettings ?? []) + [.unsafeFlags(["-Xfrontend", "-function-sections"], .when(configuration: .release))]
}
