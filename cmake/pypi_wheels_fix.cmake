# Only for building against the PyPI ROS 2 wheels (scripts/setup.sh injects it with
# -DCMAKE_PROJECT_INCLUDE). Their exported *__rosidl_generator_py targets name include
# folders of the wheel builder's image, which CMake rejects at generate time; drop
# the folders that do not exist. On a real ROS 2 install every folder exists: no-op.
function(_sac_ros_strip_missing_includes)
  get_property(targets DIRECTORY "${CMAKE_SOURCE_DIR}" PROPERTY IMPORTED_TARGETS)
  foreach(target IN LISTS targets)
    get_target_property(dirs ${target} INTERFACE_INCLUDE_DIRECTORIES)
    if(dirs)
      set(kept "")
      foreach(dir IN LISTS dirs)
        if(dir MATCHES "^\\$<" OR EXISTS "${dir}")
          list(APPEND kept "${dir}")
        endif()
      endforeach()
      set_target_properties(${target} PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${kept}")
    endif()
  endforeach()
endfunction()
cmake_language(DEFER DIRECTORY "${CMAKE_SOURCE_DIR}" CALL _sac_ros_strip_missing_includes)
