# Packaging: install rules for what is not a build target (man pages, the
# systemd unit of stasisd, the example /etc/stasis/stasis.yaml) and the CPack
# configuration of the Debian package (`cpack -G DEB` in the build folder).
# Included once at the end of the top CMakeLists.txt; binaries, libcr, its
# headers and libcr.pc have their install() rules next to their targets.
#
# The .deb installs to /usr, and cr_run, libcr and libcr.pc have paths under
# the install prefix compiled in: build the package from a build folder
# configured with CMAKE_INSTALL_PREFIX=/usr (cpack refuses any other).
include_guard(GLOBAL)
include(GNUInstallDirs)

set(STASIS_PACKAGING_DIR ${PROJECT_SOURCE_DIR}/packaging)

# --- Man pages: gzipped (Debian policy) when gzip exists, else as they are.
set(_stasis_man_pages
  cr_run.1 cr_checkpoint.1 cr_restart.1 stasis.1 stasis.yaml.5 stasisd.8)
find_program(STASIS_GZIP gzip)
mark_as_advanced(STASIS_GZIP)
set(_stasis_man_outputs)
foreach(page IN LISTS _stasis_man_pages)
  string(REGEX REPLACE ".*\\.([1-8])$" "\\1" section ${page})
  set(src ${PROJECT_SOURCE_DIR}/man/${page})
  if(STASIS_GZIP)
    set(out ${PROJECT_BINARY_DIR}/man/${page}.gz)
    # -n: no name or time stamp inside, so the package is reproducible.
    add_custom_command(OUTPUT ${out}
      COMMAND ${CMAKE_COMMAND} -E make_directory ${PROJECT_BINARY_DIR}/man
      COMMAND ${STASIS_GZIP} -9nc ${src} > ${out}
      DEPENDS ${src}
      COMMENT "Compressing man page ${page}"
      VERBATIM)
    list(APPEND _stasis_man_outputs ${out})
  else()
    set(out ${src})
  endif()
  install(FILES ${out} DESTINATION ${CMAKE_INSTALL_MANDIR}/man${section})
endforeach()
if(_stasis_man_outputs)
  add_custom_target(stasis_man_pages ALL DEPENDS ${_stasis_man_outputs})
endif()

# --- systemd unit and example configuration. Where they go is decided when
# installing, not when configuring, so `cmake --install B --prefix P` of a
# folder configured for /usr keeps them under P too:
#   prefix /usr: /lib/systemd/system (Debian 12's unit folder, the same as
#     /usr/lib/systemd/system on merged-/usr systems) and /etc/stasis;
#   any other prefix: PREFIX/lib/systemd/system and PREFIX/etc/stasis, which
#     is where stasisd and cr_checkpoint of that prefix look for stasis.yaml
#     (engine/base/install_paths.h), wherever the prefix is moved.
# STASIS_SYSTEMD_UNITDIR puts the unit elsewhere (e.g. /etc/systemd/system
# for a prefix install the site wants systemd to see).
# packaging/stasisd.service names /usr/sbin/stasisd and /etc/stasis: the
# installed copy names the installed paths.
set(STASIS_SYSTEMD_UNITDIR "" CACHE PATH
  "Where stasisd.service is installed (empty: /lib/systemd/system for prefix /usr, else lib/systemd/system under the prefix)")
set_property(DIRECTORY ${PROJECT_SOURCE_DIR} APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS
  ${STASIS_PACKAGING_DIR}/stasisd.service)
# The .deb's conffile (cpack builds only for prefix /usr).
set(STASIS_CONFIG_INSTALL_DIR /etc/stasis)
install(CODE "
  if(CMAKE_INSTALL_PREFIX STREQUAL \"/usr\")
    set(_sbin /usr/sbin)
    set(_dir /etc/stasis)
    set(_unitdir /lib/systemd/system)
  else()
    set(_sbin \"\${CMAKE_INSTALL_PREFIX}/${CMAKE_INSTALL_SBINDIR}\")
    set(_dir \"\${CMAKE_INSTALL_PREFIX}/${CMAKE_INSTALL_SYSCONFDIR}/stasis\")
    set(_unitdir \"\${CMAKE_INSTALL_PREFIX}/lib/systemd/system\")
  endif()
  if(NOT \"${STASIS_SYSTEMD_UNITDIR}\" STREQUAL \"\")
    set(_unitdir \"${STASIS_SYSTEMD_UNITDIR}\")
  endif()
  file(READ \"${STASIS_PACKAGING_DIR}/stasisd.service\" _unit)
  string(REPLACE /usr/sbin/stasisd \"\${_sbin}/stasisd\" _unit \"\${_unit}\")
  string(REPLACE /etc/stasis/ \"\${_dir}/\" _unit \"\${_unit}\")
  file(WRITE \"${PROJECT_BINARY_DIR}/packaging/stasisd.service\" \"\${_unit}\")
  # file(INSTALL) puts DESTDIR in front of the destination itself.
  file(INSTALL DESTINATION \"\${_unitdir}\" TYPE FILE
       PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ
       FILES \"${PROJECT_BINARY_DIR}/packaging/stasisd.service\")

  # The example configuration. The .deb ships it as a conffile (dpkg keeps an
  # admin's changes). A plain `cmake --install` (no DESTDIR) never overwrites
  # an existing, different stasis.yaml: it installs stasis.yaml.example.
  set(_src \"${STASIS_PACKAGING_DIR}/stasis.yaml\")
  set(_name stasis.yaml)
  if(\"\$ENV{DESTDIR}\" STREQUAL \"\" AND EXISTS \"\${_dir}/stasis.yaml\")
    file(SHA256 \"\${_src}\" _new)
    file(SHA256 \"\${_dir}/stasis.yaml\" _old)
    if(NOT _new STREQUAL _old)
      message(STATUS \"Keeping: \${_dir}/stasis.yaml (example installed as stasis.yaml.example)\")
      set(_name stasis.yaml.example)
    endif()
  endif()
  file(INSTALL DESTINATION \"\${_dir}\" TYPE FILE
       PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ
       RENAME \${_name} FILES \"\${_src}\")
")

# --- Environment module: PREFIX/share/modulefiles/stasis/<version>, one Tcl
# modulefile for Lmod and environment-modules (`module use
# PREFIX/share/modulefiles; module load stasis`). It finds its prefix from
# its own location, so it needs relative install folders; with an absolute
# one (a -DCMAKE_INSTALL_LIBDIR=/abs, say) it names that folder as it is.
set(STASIS_MODULE_DIR ${CMAKE_INSTALL_DATADIR}/modulefiles/stasis)
file(RELATIVE_PATH STASIS_MODULE_TO_PREFIX ${CMAKE_INSTALL_FULL_DATADIR}/modulefiles/stasis
     ${CMAKE_INSTALL_PREFIX})
configure_file(${STASIS_PACKAGING_DIR}/modules/stasis.tcl.in
               ${PROJECT_BINARY_DIR}/packaging/modulefile @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/packaging/modulefile DESTINATION ${STASIS_MODULE_DIR}
        RENAME ${PROJECT_VERSION})

# --- CPack: one Debian package, stasis_<version>_<arch>.deb.
set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME stasis)
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_VENDOR "stasis developers")
set(CPACK_PACKAGE_CONTACT "stasis developers <stasis@localhost>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY
  "transparent checkpoint/restart for Linux clusters (BLCR successor)")
# The long description (indented by CPack in the control file).
set(CPACK_PACKAGE_DESCRIPTION "\
stasis freezes every process of a job at one consistent point, writes one
context file per node and later restarts the job from those files, with the
processes continuing where they stopped. It speaks BLCR's command line
(cr_run, cr_checkpoint, cr_restart) and API (libcr.so.0, libcr.h).
.
This package holds the tools, libcr with its header and pkg-config file,
stasisd (the node-local engine service, with its systemd unit and an
example /etc/stasis/stasis.yaml) and their man pages.")
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_STRIP_FILES ON)
set(CPACK_PACKAGE_FILE_NAME stasis-${PROJECT_VERSION})

set(CPACK_DEBIAN_PACKAGE_NAME stasis)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_MAINTAINER "stasis developers <stasis@localhost>")
set(CPACK_DEBIAN_PACKAGE_SECTION admin)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
# DEBIAN/shlibs for libcr.so.0, so packages built against it depend on us.
set(CPACK_DEBIAN_PACKAGE_GENERATE_SHLIBS ON)
set(CPACK_DEBIAN_PACKAGE_GENERATE_SHLIBS_POLICY ">=")
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION TRUE)
# conffiles: the example configuration (dpkg keeps an admin's edits and
# leaves the file on remove, deletes it on purge).
file(WRITE ${PROJECT_BINARY_DIR}/packaging/conffiles "${STASIS_CONFIG_INSTALL_DIR}/stasis.yaml\n")
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA
  ${PROJECT_BINARY_DIR}/packaging/conffiles
  ${STASIS_PACKAGING_DIR}/debian/postinst
  ${STASIS_PACKAGING_DIR}/debian/prerm
  ${STASIS_PACKAGING_DIR}/debian/postrm
  ${STASIS_PACKAGING_DIR}/debian/triggers)

# Checked when cpack runs: a build for another prefix would give a package
# whose cr_run, libcr and libcr.pc look for files where they are not.
set(CPACK_PROJECT_CONFIG_FILE ${PROJECT_BINARY_DIR}/packaging/CPackProjectConfig.cmake)
file(WRITE ${CPACK_PROJECT_CONFIG_FILE} "\
# Generated by cmake/Packaging.cmake: read by cpack for each generator.
if(CPACK_GENERATOR STREQUAL \"DEB\" AND NOT \"${CMAKE_INSTALL_PREFIX}\" STREQUAL \"/usr\")
  message(FATAL_ERROR \"stasis: the .deb installs to /usr, but this build folder \"
    \"(${PROJECT_BINARY_DIR}) has CMAKE_INSTALL_PREFIX=${CMAKE_INSTALL_PREFIX} \"
    \"compiled in; reconfigure it with -DCMAKE_INSTALL_PREFIX=/usr, build, and run cpack again\")
endif()
")

include(CPack)
