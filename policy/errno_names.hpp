#pragma once

namespace tcpfix::policy {

// The symbolic name of an errno value ("ECONNREFUSED"), or nullptr for a
// value Linux does not define. The same names as glibc's strerrorname_np.
const char* errno_symbol(int err);

}  // namespace tcpfix::policy
