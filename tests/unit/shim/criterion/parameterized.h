/* Shim: parameterized tests are not used by the suite. */
#include "criterion.h"
