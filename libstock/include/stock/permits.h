#ifndef STOCK_PERMITS_H
#define STOCK_PERMITS_H
#include "common.h"
#endif
