// Command nnp prints its effective user id. The nonewprivs test image installs it setuid root: started as a
// non-root user it prints 0 unless the container runs with no_new_privs, which makes the kernel ignore setuid bits.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Printf("Effective uid: %d\n", os.Geteuid())
}
