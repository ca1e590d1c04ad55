package proctest

// FreeRange is freeRange, for the tests.
var FreeRange = freeRange
