import VHotplugCommands

Entry.main()
