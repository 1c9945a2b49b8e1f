import DeviceModel

/// A capability bitmap as sysfs prints it: hex words, most significant first,
/// separated by spaces (`capabilities/key` = "1000 0 ... fffffffe").
public struct Bitmap: Sendable, Hashable {
    /// 64-bit words, least significant first.
    public var words: [UInt64]

    public init(words: [UInt64]) { self.words = words }

    /// Parses sysfs text; nil on garbage. Words are `unsigned long` (64-bit here).
    public init?(sysfs text: String) {
        let parts = text.split(whereSeparator: { $0 == " " || $0 == "\n" })
        var w: [UInt64] = []
        for p in parts.reversed() {
            guard p.count <= 16, let v = UInt64(p, radix: 16) else { return nil }
            w.append(v)
        }
        words = w
    }

    public func has(_ bit: Int) -> Bool {
        let i = bit / 64
        return bit >= 0 && i < words.count && words[i] & (1 << UInt64(bit % 64)) != 0
    }

    public func any(_ range: Range<Int>) -> Bool { range.contains { has($0) } }

    /// How many of the bits in `range` are set.
    public func count(_ range: Range<Int>) -> Int { range.reduce(0) { $0 + (has($1) ? 1 : 0) } }
}

/// The capability bitmaps of one input device.
public struct InputCapabilities: Sendable, Hashable {
    public var ev: Bitmap
    public var key: Bitmap
    public var rel: Bitmap
    public var abs: Bitmap
    public var sw: Bitmap
    public var properties: Bitmap

    public init(ev: Bitmap, key: Bitmap = Bitmap(words: []), rel: Bitmap = Bitmap(words: []),
                abs: Bitmap = Bitmap(words: []), sw: Bitmap = Bitmap(words: []), properties: Bitmap = Bitmap(words: [])) {
        self.ev = ev
        self.key = key
        self.rel = rel
        self.abs = abs
        self.sw = sw
        self.properties = properties
    }

    // Linux input-event-codes.h values used below.
    static let BUS_I2C: UInt16 = 0x18
    static let EV_KEY = 0x01, EV_REL = 0x02, EV_ABS = 0x03, EV_SW = 0x05
    static let REL_X = 0x00, REL_Y = 0x01, REL_HWHEEL = 0x06, REL_WHEEL = 0x08
    static let ABS_X = 0x00, ABS_Y = 0x01, ABS_Z = 0x02, ABS_RX = 0x03, ABS_PRESSURE = 0x18,
               ABS_MT_SLOT = 0x2f, ABS_MT_POSITION_X = 0x35, ABS_MT_POSITION_Y = 0x36
    static let BTN_MISC = 0x100, BTN_0 = 0x100, BTN_1 = 0x101, BTN_MOUSE = 0x110, BTN_JOYSTICK = 0x120,
               BTN_DIGI = 0x140, BTN_TOOL_PEN = 0x140, BTN_TOUCH = 0x14a, BTN_STYLUS = 0x14b,
               BTN_TOOL_FINGER = 0x145, BTN_TRIGGER_HAPPY = 0x2c0, BTN_TRIGGER_HAPPY40 = 0x2e7,
               KEY_OK = 0x160, BTN_DPAD_UP = 0x220, KEY_ALS_TOGGLE = 0x230
    /// One key of each of ten groups a keyboard has and a joystick rarely does (LEFTCTRL, CAPSLOCK,
    /// NUMLOCK, INSERT, MUTE, CALC, FILE, MAIL, PLAYPAUSE, BRIGHTNESSDOWN): udev's and libinput's
    /// sign of a keyboard that claims joystick buttons.
    static let wellKnownKeyboardKeys = [29, 58, 69, 110, 113, 140, 144, 155, 164, 224]
    static let INPUT_PROP_POINTER = 0x00, INPUT_PROP_DIRECT = 0x01, INPUT_PROP_POINTING_STICK = 0x05,
               INPUT_PROP_ACCELEROMETER = 0x06

    /// The kinds udev's `input_id` builtin would give (ID_INPUT_KEYBOARD, _MOUSE, ...),
    /// computed the same way from the same bitmaps.
    public var kinds: [InputKind] { kinds(busType: 0) }

    /// The same, knowing the bus: udev holds that there is no such thing as an
    /// I2C mouse, so a mouse on I2C is the pointing stick of a touchpad.
    public func kinds(busType: UInt16) -> [InputKind] {
        var kinds = Set<InputKind>()
        let hasKeys = ev.has(Self.EV_KEY)
        let hasAbsCoordinates = abs.has(Self.ABS_X) && abs.has(Self.ABS_Y)
        let has3D = hasAbsCoordinates && abs.has(Self.ABS_Z)
        let isAccelerometer = properties.has(Self.INPUT_PROP_ACCELEROMETER)
        if isAccelerometer || (!hasKeys && has3D) {
            kinds.insert(.accelerometer)
        } else {
            let stylusOrPen = key.has(Self.BTN_STYLUS) || key.has(Self.BTN_TOOL_PEN)
            let fingerButNoPen = key.has(Self.BTN_TOOL_FINGER) && !key.has(Self.BTN_TOOL_PEN)
            let hasMouseButton = key.any(Self.BTN_MOUSE..<Self.BTN_JOYSTICK)
            let hasRel = ev.has(Self.EV_REL) && rel.has(Self.REL_X) && rel.has(Self.REL_Y)
            var hasMT = abs.has(Self.ABS_MT_POSITION_X) && abs.has(Self.ABS_MT_POSITION_Y)
            // A device claiming every abs axis is not really multi-touch.
            if hasMT && abs.has(Self.ABS_MT_SLOT) && abs.has(Self.ABS_MT_SLOT - 1) { hasMT = false }
            let isDirect = properties.has(Self.INPUT_PROP_DIRECT)
            let hasTouch = key.has(Self.BTN_TOUCH)
            let hasPadButtons = key.has(Self.BTN_0) && key.has(Self.BTN_1) && !key.has(Self.BTN_TOOL_PEN)
            let hasWheel = ev.has(Self.EV_REL) && (rel.has(Self.REL_WHEEL) || rel.has(Self.REL_HWHEEL))
            // A mouse with many buttons runs into the joystick range: skip those.
            let joystickButtons = key.has(Self.BTN_JOYSTICK - 1) ? 0
                : key.count(Self.BTN_JOYSTICK..<Self.BTN_DIGI)
                    + key.count(Self.BTN_TRIGGER_HAPPY..<(Self.BTN_TRIGGER_HAPPY40 + 1))
                    + key.count(Self.BTN_DPAD_UP..<(Self.BTN_DPAD_UP + 4))
            let joystickAxes = abs.count(Self.ABS_RX..<Self.ABS_PRESSURE)
            let joystick = joystickButtons > 0 || joystickAxes > 0
            var isTablet = false, isTouchpad = false, isMouse = false, isTouchscreen = false, isJoystick = false
            if hasAbsCoordinates {
                if stylusOrPen { isTablet = true }
                else if fingerButNoPen && !isDirect { isTouchpad = true }
                else if hasMouseButton { isMouse = true }
                else if hasTouch || isDirect { isTouchscreen = true }
                else if joystick { isJoystick = true }
            } else if joystick {
                isJoystick = true
            }
            if hasMT {
                if stylusOrPen { isTablet = true }
                else if fingerButNoPen && !isDirect { isTouchpad = true }
                else if hasTouch || isDirect { isTouchscreen = true }
            }
            if hasPadButtons && hasWheel && !hasRel { isTablet = true }
            if !isTablet && !isTouchpad && !isJoystick && hasMouseButton && (hasRel || !hasAbsCoordinates) {
                isMouse = true
            }
            // Un-detection (after the mouse test, as udev does it): a keyboard with stray joystick
            // buttons (4 or more of the well-known keys), fewer than 2 joystick buttons and axes
            // together, or a tablet pad's buttons and wheel is not a joystick.
            if isJoystick {
                let keyboardKeys = hasKeys ? Self.wellKnownKeyboardKeys.count(where: key.has) : 0
                if keyboardKeys >= 4 || joystickButtons + joystickAxes < 2 || (hasWheel && hasPadButtons) {
                    isJoystick = false
                }
            }
            if isMouse { kinds.insert(.mouse) }
            if isTouchpad { kinds.insert(.touchpad) }
            if isTouchscreen { kinds.insert(.touchscreen) }
            if isTablet { kinds.insert(.tablet) }
            if isJoystick { kinds.insert(.joystick) }
            if properties.has(Self.INPUT_PROP_POINTING_STICK) || (isMouse && busType == Self.BUS_I2C) {
                kinds.insert(.pointingStick)
            }
        }
        if hasKeys {
            // Keys proper (not BTN_*): below BTN_MISC, or KEY_OK up to the trigger-happy buttons.
            let keys = key.any(0..<Self.BTN_MISC) || key.any(Self.KEY_OK..<Self.BTN_DPAD_UP)
                || key.any(Self.KEY_ALS_TOGGLE..<Self.BTN_TRIGGER_HAPPY)
            if keys { kinds.insert(.key) }
            // ESC, the digits and Q to D: a full keyboard (KEY_RESERVED not tested).
            if let w = key.words.first, w & 0xFFFF_FFFE == 0xFFFF_FFFE { kinds.insert(.keyboard) }
        }
        // Some event nodes have only a scroll wheel.
        if kinds.isEmpty && ev.has(Self.EV_REL) && (rel.has(Self.REL_WHEEL) || rel.has(Self.REL_HWHEEL)) {
            kinds.insert(.key)
        }
        if ev.has(Self.EV_SW) { kinds.insert(.switch) }
        return kinds.sorted { $0.rawValue < $1.rawValue }
    }
}
