// What every entry-point file (client/api_*.cc) needs, under the short names
// they all use. The entry points are global extern "C" functions, so the
// names are brought in at global scope: include this from api_*.cc only.
#pragma once

#include "client/cuda_result.h"
#include "client/runtime.h"

using ferry::Status;
using ferry::client::Api;
using ferry::client::Runtime;
using ferry::client::StreamTarget;
namespace wire = ferry::wire;
