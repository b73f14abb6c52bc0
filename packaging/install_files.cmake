# The install-time half of packaging/CMakeLists.txt: files whose place or
# content depends on the prefix chosen when installing (`cmake --install
# --prefix P`, or /usr for the .deb packages), not when configuring. Runs in
# cmake's script mode inside the install step; file(INSTALL) adds $DESTDIR.
#
#   prefix /usr:     config in /etc/ferry, state in /var/lib/ferry (a system
#                    package's places, as the units and the README name them)
#   other prefix P:  P/etc/ferry, P/var/lib/ferry
#   always:          P/bin, P/lib/systemd/system, P/lib/sysusers.d

# Sets FERRY_BINDIR, FERRY_SYSCONFDIR, FERRY_STATEDIR for the install prefix.
macro(ferry_install_dirs)
  set(FERRY_BINDIR "${CMAKE_INSTALL_PREFIX}/bin")
  if(CMAKE_INSTALL_PREFIX STREQUAL "/usr")
    set(FERRY_SYSCONFDIR /etc)
    set(FERRY_STATEDIR /var/lib)
  else()
    set(FERRY_SYSCONFDIR "${CMAKE_INSTALL_PREFIX}/etc")
    set(FERRY_STATEDIR "${CMAKE_INSTALL_PREFIX}/var/lib")
  endif()
endmacro()

# Installs `template` (@BINDIR@, @SYSCONFDIR@, @STATEDIR@ filled in) as
# DESTINATION/NAME. A config file an operator may have edited (`config`
# true) is kept when installing straight onto a system ($DESTDIR empty);
# packages get it always (dpkg handles conffiles).
function(ferry_install_configured template destination name work_dir config)
  ferry_install_dirs()
  set(BINDIR "${FERRY_BINDIR}")
  set(SYSCONFDIR "${FERRY_SYSCONFDIR}")
  set(STATEDIR "${FERRY_STATEDIR}")
  if(config AND "$ENV{DESTDIR}" STREQUAL "" AND EXISTS "${destination}/${name}")
    message(STATUS "Keeping: ${destination}/${name}")
    return()
  endif()
  configure_file("${template}" "${work_dir}/${name}" @ONLY)
  file(INSTALL "${work_dir}/${name}" DESTINATION "${destination}")
endfunction()

function(ferry_install_server_files source_dir work_dir)
  ferry_install_dirs()
  ferry_install_configured("${source_dir}/ferryd.service.in"
    "${CMAKE_INSTALL_PREFIX}/lib/systemd/system" ferryd.service "${work_dir}" FALSE)
  ferry_install_configured("${source_dir}/ferryd.toml.in"
    "${FERRY_SYSCONFDIR}/ferry" ferryd.toml "${work_dir}" TRUE)
  file(INSTALL "${source_dir}/ferry.sysusers"
    DESTINATION "${CMAKE_INSTALL_PREFIX}/lib/sysusers.d" RENAME ferry.conf)
endfunction()

function(ferry_install_client_files source_dir work_dir)
  ferry_install_dirs()
  ferry_install_configured("${source_dir}/client.toml"
    "${FERRY_SYSCONFDIR}/ferry" client.toml "${work_dir}" TRUE)
endfunction()
