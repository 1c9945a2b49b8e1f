import ControlAPI
import DeviceModel
import JSONKit
import Logging
import VMM

/// `vmm_args`: a VM launcher asks, just before it starts a VM, for the arguments that
/// give the VM its PCI devices (and evdev input devices) from its start. Each PCI
/// device goes to vfio-pci now, exactly as for a hot-plug (its whole IOMMU group,
/// with the record that gives it back), and the device is from now on the VM's:
/// when the VM comes up, the daemon's resync finds it by its id and treats it as
/// attached (no second device_add; detached on unplug).
extension Daemon {
    func vmmArgs(_ request: VMMArgsRequest) async -> JSONText {
        guard let vm = configuration.vm(named: request.vm) else {
            let known = configuration.vms.map { quoted($0.name) }.joined(separator: ", ")
            return APIReply.failed("vmm_args: no VM named \(quoted(request.vm, limit: 80)) (configured: \(known.isEmpty ? "none" : known))")
        }
        let leaders = startDevices(for: vm.name, pci: true)
        if let conflict = leaders.lazy.compactMap({ $0.t.groupConflict }).first {
            return APIReply.failed("vmm_args for \(vm.name): \(conflict)")
        }
        // pciIommuAddAll: the other devices of their IOMMU groups go with them, as on hot-plug.
        let pci = (leaders + followers(of: leaders.map(\.key)).compactMap { key in devices[key].map { (key: key, t: $0) } })
            .sorted { $0.key < $1.key }
        let evdev = startDevices(for: vm.name, pci: false)
        if request.requirePCI && pci.isEmpty {
            logger.info("API: vmm_args for \(vm.name): no PCI device for it (require_pci)")
            return APIReply.failed("no PCI device for VM \(vm.name)")
        }
        if !vmDown.contains(vm.name), backends[vm.name] != nil {
            logger.warning("API: vmm_args for VM \(vm.name), which is running: its devices are hot-plugged into it; the start arguments are returned anyway")
        }
        var bound: [StartArguments.PCI] = []
        let present = pciAddressesPresent()
        for (key, t) in pci {
            guard case .pci(let d) = t.device else { continue }
            if let problem = await prepareForStart(key, t, d, vm: vm.name) {
                return APIReply.failed("vmm_args for \(vm.name): \(problem)")
            }
            bound.append(.init(address: d.address, multifunction: StartArguments.isMultifunctionSlot(d.address, present: present)))
        }
        var inputs: [StartArguments.Evdev] = []
        for (key, t) in evdev {
            guard case .input(let d) = t.device else { continue }
            destine(key, t, to: vm.name)
            inputs.append(.init(key: DeviceIds.evdevKey(d), devnode: d.devnode))
        }
        let args = StartArguments.arguments(for: vm.type, pci: bound, evdev: inputs,
                                            busPrefix: request.busPrefix, busStartIndex: request.busStartIndex)
        logger.info("API: vmm_args for \(vm.name): \(bound.count) PCI and \(inputs.count) input device\(bound.count + inputs.count == 1 ? "" : "s"): \(args.joined(separator: " "))")
        return APIReply.ok([("vmm_args", .array(args.map(JSONText.string)))])
    }

    /// Present devices of the kind that the rules give to `vm`, except those the user detached.
    func startDevices(for vm: String, pci: Bool) -> [(key: String, t: Tracked)] {
        devices.filter { _, t in
            guard t.present, t.decision.targetVm == vm, !api.state.disconnected.contains(Self.identity(t.device)) else { return false }
            switch t.device {
            case .pci: return pci
            case .input: return !pci
            case .usb: return false
            }
        }.map { (key: $0.key, t: $0.value) }.sorted { $0.key < $1.key }
    }

    /// Every PCI function on the host (for `multifunction=on`).
    func pciAddressesPresent() -> [String] {
        devices.values.compactMap { t in
            if t.present, case .pci(let d) = t.device { return d.address }
            return nil
        }
    }

    /// The device is the VM's from now on: where the daemon wants it.
    func destine(_ key: String, _ t: Tracked, to vm: String) {
        guard t.want != vm else { return }
        aim(key, t, at: vm)
        logger.info("\(t.logName): for \(vm) from its start (vmm_args)")
    }

    /// Destines a PCI device to the VM and moves it to vfio-pci (unless it is there from an
    /// earlier bind). Its reconcile task (if one runs) ends first, and none runs during the
    /// bind; afterwards the device is reconciled as usual (a running VM gets it hot-plugged,
    /// a stopped one finds it at its start). Returns the problem, or nil.
    func prepareForStart(_ key: String, _ t: Tracked, _ d: PCIDevice, vm: String) async -> String? {
        destine(key, t, to: vm)
        await settle([key])
        guard t.present, needsBind(t, d), t.attachment == nil else {
            if t.present { reconcile(key) }
            return t.present ? nil : "\(t.logName) was unplugged"
        }
        t.busy = true
        defer {
            t.busy = false
            reconciled(key)
            reconcile(key)
            noteIfIdle()
        }
        do {
            let record = try await bindToVFIO(t, d)
            logger.info("\(t.logName): on vfio-pci for the start of \(vm) (\(Self.groupText(record))) in \(ms(since: t.since))")
            return nil
        } catch {
            t.failed = true
            t.lastError = "\(error)"
            logger.error("\(t.logName): cannot go to vfio-pci for \(vm): \(error)")
            await giveBackDriver(t)     // (only when the bind could not undo itself and kept its record)
            return "\(t.logName) cannot go to vfio-pci: \(error)"
        }
    }
}
