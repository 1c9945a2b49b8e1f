import VHotplugCommands

Application.main()
