# Read by CPack once per generator (CPACK_PROJECT_CONFIG_FILE).
# Red Hat's layout keeps 64-bit libraries in /usr/lib64, Debian's in
# /usr/lib/<multiarch>; the library goes where the target system's loader
# looks, so LD_PRELOAD=libtcpfix.so works by name there too.
if(CPACK_GENERATOR STREQUAL "RPM")
  set(CPACK_CUSTOM_INSTALL_VARIABLES "TCPFIX_INSTALL_LIBDIR=lib64")
endif()
