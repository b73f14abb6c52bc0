# The install-time half of scripts/packaging/CMakeLists.txt: files whose place or
# content depends on the prefix chosen when installing (`cmake --install
# --prefix P`, or /usr for the .deb packages), not when configuring. Runs in
# cmake's script mode inside the install step; file(INSTALL) adds $DESTDIR.
#
#   prefix /usr:     config in /etc/ferry (a system package's place, as the
#                    unit and the README name it)
#   other prefix P:  P/etc/ferry
#   always:          P/bin, P/lib/systemd/system, P/lib/sysusers.d
# ferryd's state (/var/lib/ferry) and sockets (/run/ferry) are the unit's
# StateDirectory= and RuntimeDirectory=, the same for every prefix.

# Sets FERRY_BINDIR and FERRY_SYSCONFDIR for the install prefix.
macro(ferry_install_dirs)
  set(FERRY_BINDIR "${CMAKE_INSTALL_PREFIX}/bin")
  if(CMAKE_INSTALL_PREFIX STREQUAL "/usr")
    set(FERRY_SYSCONFDIR /etc)
  else()
    set(FERRY_SYSCONFDIR "${CMAKE_INSTALL_PREFIX}/etc")
  endif()
endmacro()

# Installs `template` (@BINDIR@ and @SYSCONFDIR@ filled in) as
# DESTINATION/NAME. A config file an operator may have edited (`config`
# true) is kept when installing straight onto a system ($DESTDIR empty);
# packages get it always (dpkg handles conffiles).
function(ferry_install_configured template destination name work_dir config)
  ferry_install_dirs()
  set(BINDIR "${FERRY_BINDIR}")
  set(SYSCONFDIR "${FERRY_SYSCONFDIR}")
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
